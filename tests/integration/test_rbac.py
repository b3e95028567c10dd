"""deploy/'s roles, enforced: the operator works under them, and needs every rule of them.

The API server authorises every request with RBAC, so these are proofs by the server's
own decisions, not by a matcher of ours:

- the cluster-wide install: the operator (`run -A`) as
  system:serviceaccount:job-operator-system:job-operator, bound by the ClusterRole and the
  leader-election Role, goes through everything it does in normal life (dispatch, a
  reschedule, a skipped and an invalid one, an orphan, a restart that finds a loss made
  while it was down, a cancel, a job deletion, a SIGTERM that releases the Lease) with no
  request refused;
- each rule, taken away in turn, makes the operator fail visibly: a 403 in its log and
  job_operator_errors_total moving, so a rule it does not use cannot stay;
- the namespaced install (deploy/overlays/namespaced, moved into the test's namespace)
  works there, and the same identity pointed at another namespace is refused there;
- a user who may only read jobs cannot reschedule or cancel: the CLI says so in one line
  with exit status 5, and the audit log shows nothing written; an editor can.
"""

from __future__ import annotations

import copy
import json
import re
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from job_operator import cli, names
from testenv.controlplane import Identity
from tests.deploy_support import (
    BASE,
    DEPLOY,
    INSTALL_NAMESPACE,
    NAMESPACED,
    SERVICE_ACCOUNT,
    SIMULATOR_ACCOUNT,
    Grant,
    Obj,
    find,
    grants_of,
    render,
    render_in_namespace,
)
from tests.helpers import Kube, wait_for
from tests.identities import IdentityMinter
from tests.integration.conftest import (
    HANG,
    LEASE_NAME,
    OPERATOR_TEST_FLAGS,
    OPERATOR_USER,
    SIMULATOR_USER,
    Installed,
    Jobs,
    Operator,
    Process,
    apply_identity_objects,
    delete_lease,
    free_port,
    job_operator_env,
)

WRITES = {"create", "update", "patch", "delete", "deletecollection"}
FORBIDDEN = re.compile(r"\(403\)|[Ff]orbidden")  # an ApiException; kopf's; the server's message


def rules_of(path: Path, kind: str) -> list[tuple[str, int, Obj]]:
    """(role name, index, rule) of every rule of the `kind` objects in a manifest file."""
    return [
        (doc["metadata"]["name"], i, rule)
        for doc in yaml.safe_load_all(path.read_text())
        if doc and doc["kind"] == kind
        for i, rule in enumerate(doc["rules"])
    ]


# Every rule of the operator's own roles (read from the files, for the test ids).
OPERATOR_RULES = rules_of(DEPLOY / "base" / "rbac.yaml", "ClusterRole") + rules_of(
    DEPLOY / "base" / "leader-election-rbac.yaml", "Role"
)


def rule_id(rule: tuple[str, int, Obj] | None) -> str:
    if rule is None:
        return "every-rule"
    name, i, body = rule
    return f"{name}[{i}]:{','.join(body['resources'])}:{','.join(body['verbs'])}"


# --- the audit log and the operator's signs of failure ---------------------------------


def audit_log(kube: Kube) -> Path:
    assert kube.control_plane is not None and kube.control_plane.audit_log is not None
    return kube.control_plane.audit_log


def audit_position(kube: Kube) -> int:
    log = audit_log(kube)
    return log.stat().st_size if log.exists() else 0


def audit_entries(kube: Kube, since: int, username: str) -> list[dict[str, Any]]:
    """The requests `username` made since `since` (answered, or for a watch under way,
    started), as the server audited them."""
    with audit_log(kube).open("rb") as f:
        f.seek(since)
        data = f.read()
    # Whole lines only: the server may be writing the last one (other clients still run).
    entries = [json.loads(line) for line in data[: data.rfind(b"\n") + 1].splitlines() if line]
    return [
        e for e in entries
        if e.get("stage") in ("ResponseStarted", "ResponseComplete")  # a watch: started
        and (e.get("user") or {}).get("username") == username
    ]  # fmt: skip


def code(entry: dict[str, Any]) -> int:
    return int((entry.get("responseStatus") or {}).get("code") or 0)


def described(entry: dict[str, Any]) -> str:
    ref = entry.get("objectRef") or {}
    what = "/".join(p for p in (ref.get("resource"), ref.get("subresource")) if p)
    where = ref.get("namespace") or "(cluster)"
    return f"{code(entry)} {entry['verb']} {ref.get('apiGroup') or 'core'}/{what} in {where}"


def refused(entries: list[dict[str, Any]]) -> list[str]:
    return [described(e) for e in entries if code(e) in (401, 403)]


# Verbs a normal run may not exercise, with the reason (each is still needed: the rule it
# is in fails visibly when taken away). Keep it short.
RARELY_USED = {
    ("get", names.GROUP, names.JOB_PLURAL): "the job is re-read only after a 409 conflict",
}


def unused(entries: list[dict[str, Any]], grants: set[Grant]) -> list[str]:
    """The grants (verb, group, resource) no successful request among `entries` used,
    but those in RARELY_USED."""
    used = set()
    for entry in entries:
        ref = entry.get("objectRef") or {}
        if code(entry) < 400 and ref.get("resource"):
            resource = "/".join(p for p in (ref["resource"], ref.get("subresource")) if p)
            used.add((entry["verb"], ref.get("apiGroup") or "", resource))
    assert grants, "no grants to check"
    return sorted(
        str(g) for g in grants
        if (g.verb, g.group, g.resource) not in used | RARELY_USED.keys()
    )  # fmt: skip


def failed_visibly(operator: Operator) -> bool:
    """A 403 in the operator's log, and its errors metric moved."""
    if not FORBIDDEN.search(operator.log()):
        return False
    try:
        return operator.errors() > 0
    except OSError:  # the metrics endpoint not up yet
        return False


# --- starting the operator as an identity ----------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def control_plane_only(kube: Kube) -> None:
    """Skip the module, before any other fixture runs, on an external cluster."""
    if kube.control_plane is None or kube.control_plane.audit_log is None:
        pytest.skip(
            "needs the suite's own API server and its audit log; an external cluster "
            "(JOB_OPERATOR_TEST_KUBECONFIG=1) has no audit log the tests can read"
        )


@pytest.fixture
def start_operator(
    kube: Kube, installed: Installed, tmp_path: Path
) -> Iterator[Callable[..., Operator]]:
    """Starts `job-operator run ARGS` as IDENTITY, its Lease in LEASE_NAMESPACE (as the
    pod's POD_NAMESPACE places it); all are stopped afterwards."""
    made: list[Operator] = []

    def start(identity: Identity, lease_namespace: str, *args: str) -> Operator:
        port = free_port()
        argv = [
            sys.executable, "-m", "job_operator", "run", *args,
            "--metrics-port", str(port), "--metrics-address", "127.0.0.1",
            *OPERATOR_TEST_FLAGS, "--lease-duration", "4", "--identity", "rbac-test",
        ]  # fmt: skip
        env = {**job_operator_env(identity.kubeconfig), "POD_NAMESPACE": lease_namespace}
        op = Operator(argv, env, tmp_path / f"operator-{len(made)}.log", metrics_port=port)
        made.append(op)
        op.start()
        return op

    yield start
    for op in made:
        op.stop()


def wait_leading(op: Operator) -> None:
    """Until the operator leads and its watches are up (a standby is ready too)."""
    wait_for(
        lambda: op.ready() and op.health().startswith("ok (leader)"),
        timeout=60,
        description="the operator leading and ready",
    )


def restart_leading(op: Operator) -> None:
    op.start()
    wait_leading(op)


# --- the workload ----------------------------------------------------------------------


def handled(annotation: str, token: str) -> Callable[[dict[str, Any]], bool]:
    key = "reschedule" if annotation == names.RESCHEDULE_ANNOTATION else "cancel"
    return lambda status: (status.get(key) or {}).get("request") == token


def lease_holder(kube: Kube, namespace: str) -> str:
    out = kube.kubectl_run(
        "get", "leases.coordination.k8s.io", LEASE_NAME, "-n", namespace, "-o", "json"
    )
    holder: str = (json.loads(out.stdout).get("spec") or {}).get("holderIdentity") or ""
    return holder


def executors_of(jobs: Jobs, job: str) -> list[str]:
    return [
        e["metadata"]["name"]
        for e in jobs.executors()
        if e["metadata"]["labels"].get(names.JOB_NAME_LABEL) == job
    ]


def run_workload(kube: Kube, jobs: Jobs, operator: Operator, lease_namespace: str) -> None:
    """Everything the operator does in normal life, so that every request it makes shows;
    ends with the operator stopped (cleanly, the Lease released), errors_total at 0."""
    reschedule, cancel = names.RESCHEDULE_ANNOTATION, names.CANCEL_ANNOTATION
    wait_leading(operator)
    assert lease_holder(kube, lease_namespace) == "rbac-test"

    # Dispatch, then a manual reschedule onto a fresh executor (the old one deleted).
    jobs.create("busy", annotations=HANG)
    first = jobs.wait_running("busy")["executor"]
    jobs.annotate("busy", {reschedule: "r1"})
    jobs.wait(
        "busy",
        lambda s: (
            handled(reschedule, "r1")(s)
            and s.get("state") == "running"
            and s.get("executor") != first
        ),
        "rescheduled onto a fresh executor",
    )
    jobs.wait_events("busy", "Rescheduled")

    # A finished job: the request is skipped; an over-long token is refused.
    jobs.create("done")
    jobs.wait_state("done", "completed")
    jobs.annotate("done", {reschedule: "r2"})
    jobs.wait("done", handled(reschedule, "r2"), "reschedule skipped")
    jobs.annotate("done", {reschedule: "x" * 300})
    jobs.wait_events("done", "InvalidRescheduleRequest")

    # An executor deleted under a running job: the orphan is rescheduled by itself.
    lost = jobs.wait_running("busy")["executor"]
    jobs.kube.kubectl_run("delete", "ec", lost, "-n", jobs.namespace)
    jobs.wait_events("busy", "ExecutorLost")
    jobs.wait(
        "busy",
        lambda s: s.get("state") == "running" and s.get("executor") not in (None, first, lost),
        "running again after the loss",
    )
    assert operator.errors() == 0, operator.log()[-3000:]

    # A restart: a loss while the operator is down is found by the start-up sweep, and the
    # start-up checks for events a crash kept from being posted.
    operator.stop()
    assert lease_holder(kube, lease_namespace) == "", "SIGTERM did not release the Lease"
    gone = jobs.status("busy")["executor"]
    jobs.kube.kubectl_run("delete", "ec", gone, "-n", jobs.namespace)
    restart_leading(operator)
    jobs.wait(
        "busy",
        lambda s: s.get("state") == "running" and s.get("executor") not in (None, gone),
        "the loss found after the restart",
    )

    # Cancel: the job's executor goes.
    jobs.annotate("busy", {cancel: "c1"})
    jobs.wait(
        "busy", lambda s: handled(cancel, "c1")(s) and s.get("state") == "cancelled", "cancelled"
    )
    wait_for(
        lambda: not executors_of(jobs, "busy"), description="the cancelled job's executor deleted"
    )

    # A deleted job: the operator deletes its executors (no garbage collector here).
    jobs.create("doomed", annotations=HANG)
    jobs.wait_running("doomed")
    jobs.kube.kubectl_run("delete", "ojob", "doomed", "-n", jobs.namespace)
    wait_for(
        lambda: not executors_of(jobs, "doomed"), description="the deleted job's executor deleted"
    )
    assert operator.errors() == 0, operator.log()[-3000:]

    # A clean stop gives the Lease up, so that a standby takes over at once.
    operator.stop()
    assert operator.proc is not None
    assert operator.proc.returncode == 0, operator.log()[-3000:]
    assert lease_holder(kube, lease_namespace) == ""
    assert not FORBIDDEN.search(operator.log()), operator.log()[-3000:]


# --- the cluster-wide install -----------------------------------------------------------


@pytest.fixture
def install_lease(kube: Kube, installed: Installed) -> Iterator[str]:
    """job-operator-system, where the cluster-wide install keeps its Lease (none left)."""
    delete_lease(kube)
    yield INSTALL_NAMESPACE
    delete_lease(kube)


def test_cluster_wide_install_works_under_its_roles(
    kube: Kube,
    installed: Installed,
    jobs: Jobs,
    simulator: Process,
    start_operator: Callable[..., Operator],
    install_lease: str,
) -> None:
    assert installed.operator.name == OPERATOR_USER
    assert "system:masters" not in installed.operator.groups
    since = audit_position(kube)
    operator = start_operator(installed.operator, install_lease, "--all-namespaces")
    run_workload(kube, jobs, operator, install_lease)
    made = audit_entries(kube, since, OPERATOR_USER)
    assert made, "the audit log shows no request by the operator's identity"
    assert refused(made) == []
    simulated = audit_entries(kube, since, SIMULATOR_USER)
    assert refused(simulated) == []
    # Finer than a rule: every verb granted was used, and granted, in this run.
    assert unused(made, grants_of(installed.objects, SERVICE_ACCOUNT, INSTALL_NAMESPACE)) == []
    assert (
        unused(simulated, grants_of(installed.objects, SIMULATOR_ACCOUNT, INSTALL_NAMESPACE)) == []
    )


# --- each rule is needed ---------------------------------------------------------------


def without_rule(base: list[Obj], namespace: str, role: str, index: int) -> list[Obj]:
    """The cluster-wide install's RBAC for the ServiceAccount NAMESPACE/job-operator, with
    rule INDEX of ROLE taken out: the ClusterRole and its binding renamed after the
    namespace (so the install's own stay as they are), the Role and its binding there."""
    objects = []
    for original in base:
        if original["kind"] not in ("ClusterRole", "ClusterRoleBinding", "Role", "RoleBinding"):
            continue
        if original["metadata"]["name"] not in ("job-operator", "job-operator-leader-election"):
            continue
        obj = copy.deepcopy(original)
        if obj["kind"].startswith("Cluster"):
            obj["metadata"]["name"] = f"job-operator-{namespace}"
        else:
            obj["metadata"]["namespace"] = namespace
        if obj["kind"].endswith("Binding"):
            obj["subjects"] = [
                {"kind": "ServiceAccount", "name": SERVICE_ACCOUNT, "namespace": namespace}
            ]
            if obj["roleRef"]["kind"] == "ClusterRole":
                obj["roleRef"]["name"] = f"job-operator-{namespace}"
        elif original["metadata"]["name"] == role:
            del obj["rules"][index]
        objects.append(obj)
    return objects


@pytest.fixture
def cluster_scoped_cleanup(kube: Kube, namespace: str) -> Iterator[None]:
    yield
    kube.kubectl_run(
        "delete", f"clusterrolebinding/job-operator-{namespace}",
        f"clusterrole/job-operator-{namespace}", "--ignore-not-found", check=False,
    )  # fmt: skip


@pytest.mark.parametrize("rule", [None, *OPERATOR_RULES], ids=rule_id)
def test_every_rule_is_needed(
    kube: Kube,
    namespace: str,
    jobs: Jobs,
    mint_identity: IdentityMinter,
    start_operator: Callable[..., Operator],
    cluster_scoped_cleanup: None,
    rule: tuple[str, int, Obj] | None,
) -> None:
    """Without any one rule, the operator (cluster-wide, leader election on) fails visibly
    within its first dispatch and reschedule: a 403 in its log, errors_total moving, the
    server's refusal in the audit log. A rule whose loss nobody notices is a rule to drop.
    With every rule (the control), the same setup dispatches and reschedules cleanly."""
    role, index = (rule[0], rule[1]) if rule else ("", -1)
    apply_identity_objects(kube, without_rule(render(kube.kubectl, BASE), namespace, role, index))
    identity = mint_identity(f"system:serviceaccount:{namespace}:{SERVICE_ACCOUNT}")
    since = audit_position(kube)
    operator = start_operator(identity, namespace, "--all-namespaces")
    jobs.create("probe", annotations=HANG)

    def drive() -> bool:
        """The workload, as far as it goes: True once the probe was rescheduled (an event
        posted); each call takes the next step (dispatched: ask for a reschedule)."""
        status = jobs.status("probe")
        if status.get("executor") and not status.get("reschedule"):
            jobs.annotate("probe", {names.RESCHEDULE_ANNOTATION: "r1"})
        return bool(status.get("reschedule")) and "Rescheduled" in jobs.event_reasons("probe")

    if rule is None:
        wait_for(drive, timeout=60, interval=0.5, description="dispatched and rescheduled")
        assert not FORBIDDEN.search(operator.log()), operator.log()[-3000:]
        assert operator.errors() == 0
        assert refused(audit_entries(kube, since, identity.name)) == []
        return
    wait_for(
        lambda: (drive() or True) and failed_visibly(operator),
        timeout=60,
        interval=0.5,
        description=f"a 403 in the log and errors_total moving without {rule_id(rule)} "
        "(a rule the operator does not need?)",
    )
    assert refused(audit_entries(kube, since, identity.name)), "the server refused nothing"


# --- the namespaced install ------------------------------------------------------------


def test_namespaced_install_works_in_its_namespace_and_is_refused_elsewhere(
    kube: Kube,
    namespace: str,
    jobs: Jobs,
    simulator: Process,
    mint_identity: IdentityMinter,
    start_operator: Callable[..., Operator],
    tmp_path: Path,
) -> None:
    # The overlay as a user installs it into their namespace: operator, Lease and Jobs there.
    objects = render_in_namespace(kube.kubectl, NAMESPACED, namespace, tmp_path / "overlay")
    applied = apply_identity_objects(kube, objects)
    bound = find(applied, "ClusterRoleBinding")
    assert not bound, "the namespaced install binds nothing cluster-wide"
    identity = mint_identity(f"system:serviceaccount:{namespace}:{SERVICE_ACCOUNT}")
    (container,) = find(objects, "Deployment")[0]["spec"]["template"]["spec"]["containers"]
    # The overlay's own arguments, with $(POD_NAMESPACE) expanded as the kubelet would.
    args = [
        a.replace("$(POD_NAMESPACE)", namespace)
        for a in container["args"][1:]
        if not a.startswith("--metrics-port")
    ]
    assert f"--namespace={namespace}" in args
    since = audit_position(kube)
    operator = start_operator(identity, namespace, *args)
    run_workload(kube, jobs, operator, namespace)
    made = audit_entries(kube, since, identity.name)
    assert made and refused(made) == []
    assert unused(made, grants_of(applied, SERVICE_ACCOUNT, namespace)) == []
    elsewhere = [described(e) for e in made if (e.get("objectRef") or {}).get("namespace")
                 not in (namespace, None)]  # fmt: skip
    assert elsewhere == []

    # The same identity pointed at another namespace: refused there, by the server.
    other = f"{namespace}-other"[:63]
    kube.kubectl_run("create", "namespace", other)
    try:
        since = audit_position(kube)
        astray = start_operator(identity, namespace, f"--namespace={other}", "--no-leader-elect")
        wait_for(
            lambda: failed_visibly(astray),
            timeout=60,
            description="the operator refused in a namespace its Role does not cover",
        )
        denied = refused(audit_entries(kube, since, identity.name))
        assert denied and all(d.endswith(f" in {other}") for d in denied), denied
    finally:
        kube.kubectl_run("delete", "namespace", other, "--wait=false", check=False)


# --- users: who may reschedule ---------------------------------------------------------


def job_operator_as(identity: Identity, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "job_operator", *args],
        env=job_operator_env(identity.kubeconfig),
        capture_output=True, text=True, timeout=120, stdin=subprocess.DEVNULL, check=False,
    )  # fmt: skip


def bind(kube: Kube, namespace: str, role: str, identity: Identity) -> None:
    """A RoleBinding of the built-in ClusterRole ROLE in NAMESPACE, as an admin grants it."""
    kube.kubectl_run(
        "create", "rolebinding", f"{role}-{identity.name.rpartition(':')[2]}",
        f"--clusterrole={role}", f"--user={identity.name}", "-n", namespace,
    )  # fmt: skip


def test_a_viewer_may_not_reschedule_and_an_editor_may(
    kube: Kube,
    namespace: str,
    jobs: Jobs,
    operator: Operator,
    simulator: Process,
    mint_identity: IdentityMinter,
) -> None:
    viewer = mint_identity(f"system:serviceaccount:{namespace}:alice")
    editor = mint_identity(f"system:serviceaccount:{namespace}:bob")
    bind(kube, namespace, "view", viewer)
    bind(kube, namespace, "edit", editor)
    jobs.create("nightly", annotations=HANG)
    jobs.wait_running("nightly")
    before = jobs.get("nightly")

    # A viewer reads, but may not ask: one line naming the user, the verb, the resource.
    got = job_operator_as(viewer, "get", "nightly", "-n", namespace, "-o", "json")
    assert got.returncode == 0, got.stderr
    since = audit_position(kube)
    for command in ("reschedule", "cancel"):
        proc = job_operator_as(viewer, command, "nightly", "-n", namespace)
        assert proc.returncode == cli.EXIT_DENIED, proc.stderr
        assert proc.stderr.splitlines() == [
            f'job-operator: forbidden: User "{viewer.name}" cannot patch resource "jobs" '
            f'in API group "{names.GROUP}" in the namespace "{namespace}"'
        ]
        assert proc.stdout == ""
    writes = [e for e in audit_entries(kube, since, viewer.name) if e["verb"] in WRITES]
    assert writes and all(code(e) == 403 for e in writes), [described(e) for e in writes]
    after = jobs.get("nightly")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]

    # An editor may.
    proc = job_operator_as(editor, "reschedule", "nightly", "-n", namespace, "-o", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["outcome"] == "rescheduled"
    assert jobs.status("nightly")["reschedule"]["requestedBy"] == "job-operator-cli"


def test_unknown_credentials_get_one_line_too(
    kube: Kube, namespace: str, jobs: Jobs, mint_identity: IdentityMinter, tmp_path: Path
) -> None:
    user = mint_identity(f"system:serviceaccount:{namespace}:carol")
    forged = tmp_path / "forged-kubeconfig"
    forged.write_text(user.kubeconfig.read_text().replace(user.token, "not-a-token"))
    jobs.create("nightly", annotations=HANG)
    proc = job_operator_as(
        Identity(user.name, user.groups, "not-a-token", forged),
        "reschedule", "nightly", "-n", namespace,
    )  # fmt: skip
    assert proc.returncode == cli.EXIT_DENIED, proc.stderr
    (line,) = proc.stderr.splitlines()
    assert line.startswith("job-operator: unauthorized: the API server did not accept"), line
    assert names.RESCHEDULE_ANNOTATION not in jobs.get("nightly")["metadata"]["annotations"]
