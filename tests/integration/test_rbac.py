"""The roles in deploy/ grant exactly what the operator uses: proven from the audit log.

The operator runs under its ServiceAccount's name (a client certificate for
`system:serviceaccount:NS:job-operator`; in group system:masters, since this API server
has no RBAC authoriser to enforce the roles, so every request succeeds and is recorded),
with leader election on, through a representative workload: dispatch, a reschedule, a
skipped one, an invalid one, a cancel, an executor deleted under a running job (an
orphan), a restart (finding an orphan made while it was down), a job deletion, and a
SIGTERM that releases the Lease. Then every request the audit log shows under that name
must be allowed by the roles that deploy/ binds to that ServiceAccount, and every
permission those roles grant must have been used (or be listed below with a reason).

Run once as the cluster-wide install (deploy/base: `run -A`, the ClusterRole and the
leader-election Role) and once as the namespaced one (deploy/overlays/namespaced, moved
into the test's namespace: `run -n NS`, a Role only).
"""

from __future__ import annotations

import json
import re
import secrets
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from job_operator import names
from tests.conftest import _cleanup_namespace as cleanup_namespace
from tests.deploy_support import (
    BASE,
    INSTALL_NAMESPACE,
    NAMESPACED,
    SERVICE_ACCOUNT,
    Grant,
    Request,
    grants_of,
    render,
    render_in_namespace,
    wildcards,
)
from tests.helpers import Kube, wait_for
from tests.integration.conftest import (
    HANG,
    OPERATOR_TEST_FLAGS,
    Installed,
    Jobs,
    Operator,
    Process,
    delete_lease,
    free_port,
    job_operator_env,
)

LEASE_NAME = "job-operator-leader"

# Grants that a run may legitimately not exercise, with the reason. Keep it short: a
# grant nobody uses is a grant to remove.
JUSTIFIED_UNUSED: dict[tuple[str, str, str], str] = {}

# Requests without an object: API discovery, which every authenticated identity may make
# (the default system:discovery and system:public-info-viewer ClusterRoles), so the
# operator's roles need not grant them.
DISCOVERY = re.compile(r"^/(api|apis)(/[^/?]+){0,2}/?(\?.*)?$|^/version/?$|^/openapi/")


def audit_position(kube: Kube) -> int:
    log = audit_log(kube)
    return log.stat().st_size if log.exists() else 0


def audit_log(kube: Kube) -> Path:
    assert kube.control_plane is not None
    assert kube.control_plane.audit_log is not None
    return kube.control_plane.audit_log


def requests_by(kube: Kube, username: str, since: int) -> tuple[set[Request], set[str]]:
    """The resource requests and the non-resource URLs `username` made, from the audit log."""
    with audit_log(kube).open("rb") as f:
        f.seek(since)
        data = f.read()
    # Whole lines only: the server may be writing the last one (other clients still run).
    lines = data[: data.rfind(b"\n") + 1].decode().splitlines()
    made: set[Request] = set()
    urls: set[str] = set()
    for line in lines:
        if not line.strip():
            continue
        event: dict[str, Any] = json.loads(line)
        if (event.get("user") or {}).get("username") != username:
            continue
        ref = event.get("objectRef") or {}
        if not ref.get("resource"):
            urls.add(event["requestURI"])
            continue
        resource = ref["resource"] + (f"/{ref['subresource']}" if ref.get("subresource") else "")
        made.add(
            Request(
                event["verb"],
                ref.get("apiGroup") or "",
                resource,
                ref.get("namespace"),
                ref.get("name"),
            )
        )
    return made, urls


def check_audit(made: set[Request], urls: set[str], grants: set[Grant]) -> None:
    assert made, "the audit log shows no request by the operator's identity"
    used = sorted({f"{r.verb} {r.group or 'core'}/{r.resource}" for r in made})
    print("the operator used:", *used, *sorted(urls), sep="\n  ")
    wild = [g for g in grants if "*" in (g.verb + g.group + g.resource)]
    assert not wild, wild
    denied = sorted(str(r) for r in made if not any(g.allows(r) for g in grants))
    assert not denied, "the operator made requests its roles do not allow:\n" + "\n".join(denied)
    unused = sorted(
        str(g) for g in grants
        if not any(g.allows(r) for r in made)
        and (g.verb, g.group, g.resource) not in JUSTIFIED_UNUSED
    )  # fmt: skip
    assert not unused, "the roles grant what the operator never used:\n" + "\n".join(unused)
    other = sorted(u for u in urls if not DISCOVERY.match(u))
    assert not other, f"non-resource requests beyond discovery: {other}"


# --- fixtures ------------------------------------------------------------------------


@pytest.fixture(scope="module", autouse=True)
def control_plane_only(kube: Kube) -> None:
    """Skip the module, before any other fixture runs, on an external cluster."""
    if kube.control_plane is None or kube.control_plane.audit_log is None:
        pytest.skip(
            "needs the suite's own API server and its audit log; an external cluster "
            "(JOB_OPERATOR_TEST_KUBECONFIG=1) has neither"
        )


@pytest.fixture
def namespace(kube: Kube) -> Iterator[str]:
    """A fresh namespace with a short name: it is part of the operator's user name, the
    CN of a client certificate here, which allows 64 characters at most."""
    name = f"rbac-{secrets.token_hex(3)}"
    kube.kubectl_run("create", "namespace", name)
    try:
        yield name
    finally:
        cleanup_namespace(kube, name)


@pytest.fixture
def start_operator(
    kube: Kube,
    control_plane_only: None,
    crds: None,
    leases: None,
    tmp_path: Path,
) -> Iterator[Any]:
    """Starts `job-operator run ARGS` as IDENTITY with the Lease in LEASE_NAMESPACE."""
    made: list[Operator] = []

    def start(identity: str, lease_namespace: str, *args: str) -> Operator:
        assert kube.control_plane is not None
        kubeconfig = kube.control_plane.make_kubeconfig(identity, ["system:masters"])
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "job_operator",
            "run",
            *args,
            "--metrics-port",
            str(port),
            "--metrics-address",
            "127.0.0.1",
            *OPERATOR_TEST_FLAGS,
            "--lease-duration",
            "4",
            "--identity",
            "rbac-test",
        ]
        # As in the pod: the kubeconfig stands in for the mounted token, POD_NAMESPACE
        # (the downward API) places the Lease.
        env = {
            **job_operator_env(kubeconfig),
            "KUBECONFIG": str(kubeconfig),
            "POD_NAMESPACE": lease_namespace,
        }
        op = Operator(argv, env, tmp_path / f"operator-{len(made)}.log", metrics_port=port)
        made.append(op)
        start_leader(op)
        return op

    yield start
    for op in made:
        op.stop()


# --- the workload ----------------------------------------------------------------------


def start_leader(op: Operator) -> None:
    """Start the operator and wait until it leads and its watches are up (a standby is
    ready too, so /readyz alone does not tell)."""
    op.start()
    wait_for(
        lambda: op.ready() and op.health().startswith("ok (leader)"),
        timeout=60,
        description="the operator leading and ready",
    )


def handled(annotation: str, token: str) -> Any:
    key = "reschedule" if annotation == names.RESCHEDULE_ANNOTATION else "cancel"

    def check(status: dict[str, Any]) -> bool:
        return bool((status.get(key) or {}).get("request") == token)

    return check


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
    """Everything the operator does in normal life, so that every request it makes shows."""
    reschedule, cancel = names.RESCHEDULE_ANNOTATION, names.CANCEL_ANNOTATION
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

    # A restart: a loss while the operator is down is found by the start-up sweep, and the
    # start-up checks for events a crash kept from being posted.
    operator.stop()
    assert lease_holder(kube, lease_namespace) == "", "SIGTERM did not release the Lease"
    gone = jobs.status("busy")["executor"]
    jobs.kube.kubectl_run("delete", "ec", gone, "-n", jobs.namespace)
    start_leader(operator)
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

    # A clean stop gives the Lease up, so that a standby takes over at once.
    operator.stop()
    assert operator.proc is not None
    assert operator.proc.returncode == 0, operator.log()[-3000:]
    assert lease_holder(kube, lease_namespace) == ""


# --- the tests -------------------------------------------------------------------------


@pytest.fixture
def install_namespace(kube: Kube, installed: Installed) -> Iterator[str]:
    """job-operator-system, where the cluster-wide install runs (and keeps its Lease)."""
    delete_lease(kube)
    yield INSTALL_NAMESPACE
    delete_lease(kube)


def test_cluster_role_grants_exactly_what_the_operator_uses(
    kube: Kube,
    jobs: Jobs,
    simulator: Process,
    start_operator: Any,
    install_namespace: str,
) -> None:
    objects = render(kube.kubectl, BASE)
    assert not wildcards(objects)
    grants = grants_of(objects, SERVICE_ACCOUNT, INSTALL_NAMESPACE)
    identity = f"system:serviceaccount:{INSTALL_NAMESPACE}:{SERVICE_ACCOUNT}"
    since = audit_position(kube)
    operator = start_operator(identity, INSTALL_NAMESPACE, "--all-namespaces")
    run_workload(kube, jobs, operator, INSTALL_NAMESPACE)
    made, urls = requests_by(kube, identity, since)
    check_audit(made, urls, grants)


def test_namespaced_role_grants_exactly_what_the_operator_uses(
    kube: Kube,
    jobs: Jobs,
    simulator: Process,
    start_operator: Any,
    namespace: str,
    tmp_path: Path,
) -> None:
    # The overlay as a user installs it into their namespace: operator, Lease and Jobs there.
    objects = render_in_namespace(kube.kubectl, NAMESPACED, namespace, tmp_path / "overlay")
    assert not wildcards(objects)
    assert not [o for o in objects if o["kind"] == "ClusterRoleBinding"]  # users' roles only
    grants = grants_of(objects, SERVICE_ACCOUNT, namespace)
    assert grants
    assert all(g.namespace == namespace for g in grants)
    identity = f"system:serviceaccount:{namespace}:{SERVICE_ACCOUNT}"
    since = audit_position(kube)
    (container,) = next(o for o in objects if o["kind"] == "Deployment")["spec"]["template"][
        "spec"
    ]["containers"]
    # The overlay's own arguments, with $(POD_NAMESPACE) expanded as the kubelet would.
    args = [
        a.replace("$(POD_NAMESPACE)", namespace)
        for a in container["args"][1:]
        if not a.startswith("--metrics-port")
    ]
    assert f"--namespace={namespace}" in args
    operator = start_operator(identity, namespace, *args)
    run_workload(kube, jobs, operator, namespace)
    made, urls = requests_by(kube, identity, since)
    check_audit(made, urls, grants)
    assert all(r.namespace == namespace for r in made), sorted(
        str(r) for r in made if r.namespace != namespace
    )
