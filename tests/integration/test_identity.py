"""Who may: the API server authenticates every request and authorises it as a cluster does.

Against the live server: no credentials and a wrong token get 401; a minted user is known
by its token alone and may do exactly what RBAC grants it (Roles, ClusterRoles, their
bindings, aggregation); `kubectl auth can-i` and `whoami` agree with what the server
does; administrators may impersonate, users may not; bad RBAC objects are refused. The
users are service accounts, so every test here but those about the suite's own control
plane (its token file, its audit log, its start-up) also runs on an external cluster.
"""

from __future__ import annotations

import json
import secrets
import ssl
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from job_operator.names import GROUP, JOB_PLURAL, VERSION
from testenv.build import ControlPlaneError
from testenv.controlplane import ControlPlane, Identity
from tests.conftest import fresh_namespace
from tests.helpers import Kube, wait_for
from tests.identities import Endpoint, IdentityMinter, endpoint, kube_as, split_service_account

JOBS_PATH = f"/apis/{GROUP}/{VERSION}/{JOB_PLURAL}"


def raw_request(
    url: str,
    context: ssl.SSLContext,
    token: str | None,
    method: str = "GET",
    body: object = None,
) -> tuple[int, Any]:
    """``method url`` with only ``token`` (if any) as credentials: the status and the body.

    A body is sent as a JSON merge patch (the only body these tests send).
    """
    data = None if body is None else json.dumps(body).encode()
    request = urllib.request.Request(url, data=data, method=method)
    if data is not None:
        request.add_header("Content-Type", "application/merge-patch+json")
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return int(response.status), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return int(e.code), json.loads(e.read() or b"null")


def control_plane(kube: Kube) -> ControlPlane:
    if kube.control_plane is None:
        pytest.skip("about the suite's own control plane")
    return kube.control_plane


def test_no_token_and_a_wrong_token_are_401(kube: Kube, crds: None, tmp_path: Path) -> None:
    where = endpoint(kube, tmp_path)
    context = where.ssl_context()

    status, body = raw_request(where.server + JOBS_PATH, context, None)
    if kube.control_plane is None and status == 403:
        # A cluster with anonymous access on: known as system:anonymous, which may not.
        assert "system:anonymous" in body["message"]
    else:
        assert (status, body["reason"]) == (401, "Unauthorized"), body

    status, body = raw_request(where.server + JOBS_PATH, context, f"wrong-{secrets.token_hex(16)}")
    assert (status, body["reason"]) == (401, "Unauthorized"), body


def test_a_user_is_known_by_its_token_and_may_do_nothing_ungranted(
    kube: Kube, crds: None, namespace: str, mint_identity: IdentityMinter, tmp_path: Path
) -> None:
    user = mint_identity(f"system:serviceaccount:{namespace}:nobody")
    kubeconfig = user.kubeconfig.read_text()
    assert user.token in kubeconfig
    assert "client-certificate" not in kubeconfig
    where = endpoint(kube, tmp_path)

    status, body = raw_request(
        f"{where.server}/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{JOB_PLURAL}",
        where.ssl_context(),
        user.token,
    )

    assert (status, body["reason"]) == (403, "Forbidden"), body
    assert (
        f'User "{user.name}" cannot list resource "{JOB_PLURAL}" in API group "{GROUP}" '
        f'in the namespace "{namespace}"'
    ) in body["message"]


def test_an_administrator_by_token(
    kube: Kube, crds: None, namespace: str, mint_identity: IdentityMinter
) -> None:
    admin = mint_identity("carol", ["system:masters"])
    listed = kube_as(kube, admin).kubectl_run("get", "ojob", "-n", namespace, "-o", "json")
    assert json.loads(listed.stdout)["items"] == []


def test_token_file_changes_are_read_and_a_malformed_one_is_refused(
    kube: Kube, mint_identity: IdentityMinter
) -> None:
    cp = control_plane(kube)
    context = ssl.create_default_context(cafile=str(cp.pki / "ca.crt"))
    before = mint_identity("before", ["system:masters"])
    good = cp.token_file.read_text()
    mark = cp.apiserver_log.stat().st_size
    unread = f"token-{secrets.token_hex(16)}"
    # A new user's line, then a line with too few columns: the whole file is refused.
    malformed = good + f"{unread},dave,uid-dave\nonly,two\n"
    tmp = cp.token_file.with_name("tokens.csv.test")
    tmp.write_text(malformed)
    tmp.replace(cp.token_file)
    try:
        status, _ = raw_request(cp.server_url + "/apis", context, before.token)
        assert status == 200, "the tokens read before stay in force"
        status, _ = raw_request(cp.server_url + "/apis", context, unread)
        assert status == 401, "nothing of a malformed file is taken"

        def refusal_logged() -> bool:
            with cp.apiserver_log.open("rb") as log:
                log.seek(mark)
                return b"refused, the tokens read before stay in force" in log.read()

        wait_for(refusal_logged, timeout=30, description="the refusal in the server's log")
    finally:
        tmp.write_text(good)
        tmp.replace(cp.token_file)
    after = mint_identity("after", ["system:masters"])
    for user in (before, after):
        status, _ = raw_request(cp.server_url + "/apis", context, user.token)
        assert status == 200, user.name


def test_a_malformed_token_file_stops_the_server_at_start_up(kube: Kube, tmp_path: Path) -> None:
    cp = control_plane(kube)
    bad = tmp_path / "tokens.csv"
    bad.write_text('token-1,alice,uid-1\n"unclosed,bob,uid-2\n')
    other = ControlPlane(
        cp.toolchain,
        data_dir=tmp_path / "cp",
        extra_apiserver_args=[f"--token-auth-file={bad}"],  # the last of the flag wins
        ready_timeout=60,
    )
    with pytest.raises(ControlPlaneError) as failed:
        other.start()
    other.stop()
    assert f"--token-auth-file {bad} is malformed" in str(failed.value)


# --- RBAC, enforced -------------------------------------------------------------------

JOBS_RESOURCE = f"{JOB_PLURAL}.{GROUP}"
RBAC_API = "rbac.authorization.k8s.io/v1"
JOB_STATUS = f"{JOB_PLURAL}/status"


@dataclass(frozen=True)
class Ask:
    """One request, as `kubectl auth can-i` asks about it and as the server gets it."""

    verb: str  # get, list, patch or delete
    namespace: str
    name: str | None = None
    subresource: str | None = None

    def can_i_args(self) -> list[str]:
        target = JOBS_RESOURCE + (f"/{self.name}" if self.name else "")
        extra = [f"--subresource={self.subresource}"] if self.subresource else []
        return ["auth", "can-i", self.verb, target, *extra, "-n", self.namespace]


def can_i(kube: Kube, ask: Ask) -> bool:
    """`kubectl auth can-i`'s answer (SelfSubjectAccessReview)."""
    proc = kube.kubectl_run(*ask.can_i_args(), check=False)
    answer = proc.stdout.strip().split(" - ", 1)[0]  # "no - REASON" when there is one
    assert answer in ("yes", "no") and proc.returncode == (answer == "no"), proc
    return answer == "yes"


def server_allows(where: Endpoint, token: str, ask: Ask) -> bool:
    """Whether the server lets the request through (anything but 403; writes are dry runs)."""
    url = f"{where.server}/apis/{GROUP}/{VERSION}/namespaces/{ask.namespace}/{JOB_PLURAL}"
    if ask.name:
        url += f"/{ask.name}" + (f"/{ask.subresource}" if ask.subresource else "")
    method = "GET"
    body: object = None
    if ask.verb == "patch":
        method, body, url = "PATCH", {}, url + "?dryRun=All"
    elif ask.verb == "delete":
        method, url = "DELETE", url + "?dryRun=All"
    status, response = raw_request(url, where.ssl_context(), token, method, body)
    assert status not in (401, 500), (ask, response)
    if status == 403:
        assert response["reason"] == "Forbidden", response
        return False
    assert status in (200, 201), (ask, response)
    return True


def job_manifest(name: str, namespace: str) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": "Job",
        "metadata": {"name": name, "namespace": namespace},
        "spec": {"type": "materialize-view", "input": {}},
    }


def apply(kube: Kube, *objects: dict[str, Any]) -> None:
    kube.kubectl_run(
        "apply",
        "-f",
        "-",
        input=json.dumps({"apiVersion": "v1", "kind": "List", "items": list(objects)}),
    )


def rbac(kind: str, name: str, namespace: str | None = None, **fields: Any) -> dict[str, Any]:
    metadata: dict[str, Any] = {"name": name}
    if namespace is not None:
        metadata["namespace"] = namespace
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": kind,
        "metadata": metadata,
        **fields,
    }


def jobs_rule(
    *verbs: str, resources: tuple[str, ...] = (JOB_PLURAL,), names: tuple[str, ...] = ()
) -> dict[str, Any]:
    rule: dict[str, Any] = {
        "apiGroups": [GROUP],
        "resources": list(resources),
        "verbs": list(verbs),
    }
    if names:
        rule["resourceNames"] = list(names)
    return rule


def sa_subject(user: Identity) -> dict[str, str]:
    parts = split_service_account(user.name)
    assert parts is not None
    return {"kind": "ServiceAccount", "name": parts[1], "namespace": parts[0]}


def role_ref(kind: str, name: str) -> dict[str, str]:
    return {"apiGroup": "rbac.authorization.k8s.io", "kind": kind, "name": name}


@pytest.fixture
def other_namespace(kube: Kube) -> Iterator[str]:
    """A second namespace, for grants that must not reach it."""
    with fresh_namespace(kube, "other") as name:
        yield name


@pytest.fixture
def cluster_scoped(kube: Kube) -> Iterator[list[str]]:
    """Cluster-scoped objects (`kind/name`) a test made, deleted after it."""
    made: list[str] = []
    yield made
    if made:
        kube.kubectl_run("delete", *made, "--ignore-not-found", "--wait=false", check=False)


def wait_can(kube: Kube, ask: Ask, expected: bool = True) -> None:
    """Wait until the authoriser's view of the policy has caught up (as on any cluster)."""
    wait_for(
        lambda: can_i(kube, ask) == expected,
        timeout=30,
        interval=0.2,
        description=f"can-i {ask} to be {expected}",
    )


def test_a_user_who_may_only_get_is_refused_patch_on_jobs_and_status(
    kube: Kube, crds: None, namespace: str, mint_identity: IdentityMinter, tmp_path: Path
) -> None:
    reader = mint_identity(f"system:serviceaccount:{namespace}:reader")
    as_reader = kube_as(kube, reader)
    apply(
        kube,
        job_manifest("nightly", namespace),
        rbac("Role", "job-getter", namespace,
             rules=[jobs_rule("get", resources=(JOB_PLURAL, JOB_STATUS))]),
        rbac("RoleBinding", "job-getter", namespace,
             roleRef=role_ref("Role", "job-getter"), subjects=[sa_subject(reader)]),
    )  # fmt: skip
    wait_can(as_reader, Ask("get", namespace, "nightly"))
    as_reader.kubectl_run("get", "ojob", "nightly", "-n", namespace)

    patch = '{"metadata":{"annotations":{"job-operator.dev/reschedule":"1"}}}'
    refused = as_reader.kubectl_run(
        "patch", "ojob", "nightly", "-n", namespace, "--type=merge", "-p", patch, check=False
    )
    assert refused.returncode != 0
    assert (
        f'User "{reader.name}" cannot patch resource "{JOB_PLURAL}" in API group "{GROUP}"'
    ) in refused.stderr
    status_patch = '{"status":{"state":"completed"}}'
    refused = as_reader.kubectl_run(
        "patch", "ojob", "nightly", "-n", namespace, "--subresource=status",
        "--type=merge", "-p", status_patch, check=False,
    )  # fmt: skip
    assert refused.returncode != 0
    assert f'cannot patch resource "{JOB_PLURAL}/status"' in refused.stderr

    job = json.loads(
        kube.kubectl_run("get", "ojob", "nightly", "-n", namespace, "-o", "json").stdout
    )
    assert "job-operator.dev/reschedule" not in (job["metadata"].get("annotations") or {})
    assert (job.get("status") or {}).get("state") != "completed"


def test_can_i_agrees_with_the_server_for_users_verbs_and_resources(
    kube: Kube,
    crds: None,
    namespace: str,
    other_namespace: str,
    mint_identity: IdentityMinter,
    cluster_scoped: list[str],
    tmp_path: Path,
) -> None:
    """Namespaced grants (Role + RoleBinding, ClusterRole + RoleBinding), a cluster-wide
    one (ClusterRole + ClusterRoleBinding), one by resource name, and none."""
    users = {
        short: mint_identity(f"system:serviceaccount:{namespace}:{short}")
        for short in ("ns-reader", "cluster-reader", "ns-status-patcher", "named", "nobody")
    }
    cluster_reader = f"t-jobs-reader-{namespace}"
    status_patcher = f"t-jobs-status-patcher-{namespace}"
    cluster_scoped += [f"clusterrole/{cluster_reader}", f"clusterrole/{status_patcher}",
                       f"clusterrolebinding/{cluster_reader}"]  # fmt: skip
    apply(
        kube,
        job_manifest("job-a", namespace),
        job_manifest("job-b", namespace),
        job_manifest("job-a", other_namespace),
        rbac("Role", "reader", namespace, rules=[jobs_rule("get", "list")]),
        rbac("RoleBinding", "reader", namespace, roleRef=role_ref("Role", "reader"),
             subjects=[sa_subject(users["ns-reader"])]),
        rbac("ClusterRole", cluster_reader, rules=[jobs_rule("get", "list", "watch")]),
        rbac("ClusterRoleBinding", cluster_reader, roleRef=role_ref("ClusterRole", cluster_reader),
             subjects=[sa_subject(users["cluster-reader"])]),
        rbac("ClusterRole", status_patcher,
             rules=[jobs_rule("get"), jobs_rule("patch", resources=(JOB_STATUS,))]),
        rbac("RoleBinding", "status-patcher", namespace,
             roleRef=role_ref("ClusterRole", status_patcher),
             subjects=[sa_subject(users["ns-status-patcher"])]),
        rbac("Role", "named", namespace, rules=[jobs_rule("get", "patch", names=("job-a",))]),
        rbac("RoleBinding", "named", namespace, roleRef=role_ref("Role", "named"),
             subjects=[sa_subject(users["named"])]),
    )  # fmt: skip
    here, there = namespace, other_namespace
    asks = [
        ask
        for ns in (here, there)
        for ask in (
            Ask("get", ns, "job-a"),
            Ask("get", ns, "job-b"),
            Ask("list", ns),
            Ask("patch", ns, "job-a"),
            Ask("patch", ns, "job-a", "status"),
            Ask("delete", ns, "job-a"),
        )
        if ask.namespace == here or ask.name != "job-b"
    ]
    granted = {
        "ns-reader": {Ask("get", here, "job-a"), Ask("get", here, "job-b"), Ask("list", here)},
        "cluster-reader": {
            Ask("get", here, "job-a"), Ask("get", here, "job-b"), Ask("list", here),
            Ask("get", there, "job-a"), Ask("list", there),
        },
        "ns-status-patcher": {
            Ask("get", here, "job-a"), Ask("get", here, "job-b"),
            Ask("patch", here, "job-a", "status"),
        },
        "named": {Ask("get", here, "job-a"), Ask("patch", here, "job-a")},
        "nobody": set(),
    }  # fmt: skip
    for short, expected in granted.items():
        if expected:
            wait_can(kube_as(kube, users[short]), sorted(expected, key=str)[0])

    where = endpoint(kube, tmp_path)
    table = []
    for short, user in users.items():
        as_user = kube_as(kube, user)
        for ask in asks:
            table.append((short, ask, can_i(as_user, ask), server_allows(where, user.token, ask)))
    disagree = [row for row in table if row[2] != row[3]]
    assert not disagree, "can-i and the server disagree:\n" + "\n".join(map(str, disagree))
    wrong = [row for row in table if row[3] != (row[1] in granted[row[0]])]
    assert not wrong, "the server does not do what the roles grant:\n" + "\n".join(map(str, wrong))


def test_can_i_list_shows_the_rules_bound_to_the_user(
    kube: Kube, crds: None, namespace: str, mint_identity: IdentityMinter
) -> None:
    """`kubectl auth can-i --list` (SelfSubjectRulesReview): the bound rules, the defaults."""
    user = mint_identity(f"system:serviceaccount:{namespace}:lister")
    as_user = kube_as(kube, user)
    apply(
        kube,
        rbac("Role", "lister", namespace, rules=[jobs_rule("get", "list", names=("nightly",))]),
        rbac("RoleBinding", "lister", namespace, roleRef=role_ref("Role", "lister"),
             subjects=[sa_subject(user)]),
    )  # fmt: skip
    wait_can(as_user, Ask("get", namespace, "nightly"))

    listed = as_user.kubectl_run("auth", "can-i", "--list", "-n", namespace)
    rows = [line.split() for line in listed.stdout.splitlines()]
    assert [JOBS_RESOURCE, "[]", "[nightly]", "[get", "list]"] in rows
    assert ["selfsubjectaccessreviews.authorization.k8s.io", "[]", "[]", "[create]"] in rows
    assert not [row for row in rows if row[0] == JOBS_RESOURCE and "patch" in " ".join(row)]


def test_a_cluster_role_aggregated_by_label_grants_what_its_parts_grant(
    kube: Kube,
    crds: None,
    namespace: str,
    mint_identity: IdentityMinter,
    cluster_scoped: list[str],
    tmp_path: Path,
) -> None:
    user = mint_identity(f"system:serviceaccount:{namespace}:aggregated")
    as_user = kube_as(kube, user)
    label = f"test.job-operator.dev/aggregate-to-{namespace}"
    aggregated, reading, patching = (f"t-{part}-{namespace}" for part in ("all", "get", "patch"))
    cluster_scoped += [f"clusterrole/{name}" for name in (aggregated, reading, patching)]
    apply(
        kube,
        job_manifest("nightly", namespace),
        rbac("ClusterRole", aggregated, rules=[],
             aggregationRule={"clusterRoleSelectors": [{"matchLabels": {label: "true"}}]}),
        rbac("ClusterRole", reading, rules=[jobs_rule("get", "list")]),
        rbac("ClusterRole", patching, rules=[jobs_rule("patch", resources=(JOB_STATUS,))]),
        rbac("RoleBinding", "aggregated", namespace, roleRef=role_ref("ClusterRole", aggregated),
             subjects=[sa_subject(user)]),
    )  # fmt: skip
    get_job = Ask("get", namespace, "nightly")
    patch_status = Ask("patch", namespace, "nightly", "status")
    patch_job = Ask("patch", namespace, "nightly")
    assert not can_i(as_user, get_job), "no part is labelled yet"

    kube.kubectl_run("label", "clusterrole", reading, patching, f"{label}=true")
    wait_can(as_user, get_job)
    wait_can(as_user, patch_status)
    where = endpoint(kube, tmp_path)
    for ask, expected in ((get_job, True), (patch_status, True), (patch_job, False)):
        assert server_allows(where, user.token, ask) is expected, ask
    rules = json.loads(kube.kubectl_run("get", "clusterrole", aggregated, "-o", "json").stdout)
    assert sorted(r["verbs"][0] for r in rules["rules"]) == ["get", "patch"]

    kube.kubectl_run("label", "clusterrole", patching, f"{label}-")
    wait_can(as_user, patch_status, expected=False)
    assert not server_allows(where, user.token, patch_status)
    assert server_allows(where, user.token, get_job)


def test_impersonation_by_an_administrator_but_not_by_a_user(
    kube: Kube, crds: None, namespace: str, mint_identity: IdentityMinter
) -> None:
    user = mint_identity(f"system:serviceaccount:{namespace}:impostor")
    victim = f"system:serviceaccount:{namespace}:victim"

    as_victim = kube.kubectl_run("--as", victim, "auth", "whoami", "-o", "json")
    assert json.loads(as_victim.stdout)["status"]["userInfo"]["username"] == victim
    denied = kube.kubectl_run("--as", victim, "get", "ojob", "-n", namespace, check=False)
    assert f'User "{victim}" cannot list resource "{JOB_PLURAL}"' in denied.stderr

    refused = kube_as(kube, user).kubectl_run(
        "--as", victim, "get", "ojob", "-n", namespace, check=False
    )
    assert refused.returncode != 0
    assert f'User "{user.name}" cannot impersonate' in refused.stderr


def test_whoami_names_the_user_and_its_groups(
    kube: Kube, namespace: str, mint_identity: IdentityMinter
) -> None:
    user = mint_identity(f"system:serviceaccount:{namespace}:who")
    review = json.loads(kube_as(kube, user).kubectl_run("auth", "whoami", "-o", "json").stdout)
    info = review["status"]["userInfo"]
    assert info["username"] == user.name
    assert {*user.groups, "system:authenticated"} <= set(info["groups"])
    assert "system:serviceaccounts" in user.groups


def test_the_audit_log_records_a_denial_with_the_user(
    kube: Kube, crds: None, namespace: str, mint_identity: IdentityMinter, tmp_path: Path
) -> None:
    cp = control_plane(kube)
    assert cp.audit_log is not None
    audit_log = cp.audit_log
    user = mint_identity(f"system:serviceaccount:{namespace}:denied")
    apply(kube, job_manifest("nightly", namespace))
    patch = Ask("patch", namespace, "nightly")
    assert not server_allows(endpoint(kube, tmp_path), user.token, patch)

    def denial() -> dict[str, Any] | None:
        for line in audit_log.read_text().splitlines():
            entry: dict[str, Any] = json.loads(line)
            ref = entry.get("objectRef") or {}
            if (
                entry["user"].get("username") == user.name
                and entry["verb"] == "patch"
                and ref.get("resource") == JOB_PLURAL
                and ref.get("namespace") == namespace
                and entry.get("stage") == "ResponseComplete"
            ):
                return entry
        return None

    entry = wait_for(denial, timeout=30, description="the denied patch in the audit log")
    assert entry["responseStatus"]["code"] == 403
    assert entry["annotations"]["authorization.k8s.io/decision"] == "forbid"
    assert "system:serviceaccounts" in entry["user"]["groups"]


@pytest.mark.parametrize(
    ("manifest", "complaint"),
    [
        (rbac("Role", "no-verbs", rules=[{"apiGroups": [GROUP], "resources": ["jobs"]}]), "verbs"),
        (rbac("Role", "urls", rules=[{"nonResourceURLs": ["/healthz"], "verbs": ["get"]}]),
         "namespaced rules cannot apply to non-resource URLs"),
        (rbac("RoleBinding", "bad-kind", roleRef={**role_ref("Role", "x"), "kind": "Secret"},
              subjects=[]), "roleRef.kind"),
        (rbac("RoleBinding", "bad-subject", roleRef=role_ref("Role", "x"),
              subjects=[{"kind": "Robot", "name": "r"}]), "kind"),
    ],
    ids=["rule-without-verbs", "role-with-urls", "binding-to-a-secret", "unknown-subject-kind"],
)  # fmt: skip
def test_a_malformed_rbac_object_is_refused(
    kube: Kube, namespace: str, manifest: dict[str, Any], complaint: str
) -> None:
    manifest = {**manifest, "metadata": {**manifest["metadata"], "namespace": namespace}}
    refused = kube.kubectl_run("apply", "-f", "-", input=json.dumps(manifest), check=False)
    assert refused.returncode != 0
    assert complaint in refused.stderr, refused.stderr
    kind, name = manifest["kind"].lower(), manifest["metadata"]["name"]
    left = kube.kubectl_run("get", kind, name, "-n", namespace, "--ignore-not-found", "-o", "name")
    assert left.stdout.strip() == ""


def test_a_binding_cannot_change_its_role(kube: Kube, namespace: str) -> None:
    binding = rbac("RoleBinding", "fixed", namespace, roleRef=role_ref("ClusterRole", "view"),
                   subjects=[])  # fmt: skip
    apply(kube, binding)
    changed = {**binding, "roleRef": role_ref("ClusterRole", "edit")}
    refused = kube.kubectl_run("apply", "-f", "-", input=json.dumps(changed), check=False)
    assert refused.returncode != 0
    assert "cannot change roleRef" in refused.stderr


def test_a_role_naming_unknown_resources_grants_nothing_else_and_breaks_nothing(
    kube: Kube, crds: None, namespace: str, mint_identity: IdentityMinter, tmp_path: Path
) -> None:
    odd = mint_identity(f"system:serviceaccount:{namespace}:odd")
    reader = mint_identity(f"system:serviceaccount:{namespace}:reader")
    apply(
        kube,
        job_manifest("nightly", namespace),
        rbac("Role", "odd", namespace, rules=[
            {"apiGroups": ["nosuch.example"], "resources": ["widgetz"], "verbs": ["get", "list"]},
            jobs_rule("get", resources=("jobz", "jobs/nosuchsub")),
        ]),
        rbac("RoleBinding", "odd", namespace, roleRef=role_ref("Role", "odd"),
             subjects=[sa_subject(odd)]),
        rbac("RoleBinding", "dangling", namespace, roleRef=role_ref("Role", "no-such-role"),
             subjects=[sa_subject(odd)]),
        rbac("Role", "reader", namespace, rules=[jobs_rule("get")]),
        rbac("RoleBinding", "reader", namespace, roleRef=role_ref("Role", "reader"),
             subjects=[sa_subject(reader)]),
    )  # fmt: skip
    get_job = Ask("get", namespace, "nightly")
    wait_can(kube_as(kube, reader), get_job)
    where = endpoint(kube, tmp_path)

    assert not can_i(kube_as(kube, odd), get_job)
    assert not server_allows(where, odd.token, get_job)
    status, _ = raw_request(
        f"{where.server}/apis/nosuch.example/v1/namespaces/{namespace}/widgetz",
        where.ssl_context(),
        odd.token,
    )
    assert status == 404, "allowed, and there is no such resource"
    assert server_allows(where, reader.token, get_job), "other users are unaffected"
