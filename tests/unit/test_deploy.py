"""deploy/ rendered with `kubectl kustomize` and checked offline.

Every object is validated against the Kubernetes schemas bundled with kubernetes-validate
(the newest version it has, strict: unknown fields are errors); then what the operator
depends on is checked: the Deployment's replicas, probes, resources and security context,
the Service and PodDisruptionBudget selecting its pods, the bindings naming its
ServiceAccount, no wildcard in any role, and the namespaced overlay's Role granting what
the ClusterRole grants for namespaced resources; the users', the provisioner's and the
simulator's roles. test_rbac.py has the API server enforce them (each rule needed, the
operator working under them); test_deploy_dry_run.py sends the CRDs to an API server.
"""

from __future__ import annotations

import re
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest

from job_operator import cli
from tests.deploy_support import (
    BASE,
    DEPLOY,
    IMAGE,
    INSTALL_NAMESPACE,
    NAMESPACED,
    PROVISIONER,
    REPO,
    SERVICE_ACCOUNT,
    SIMULATOR,
    SIMULATOR_ACCOUNT,
    Obj,
    find,
    find_kubectl,
    grants_of,
    one,
    render,
    render_in_namespace,
    role_grants,
    wildcards,
)

API_SERVICE_ACCOUNT = "job-operator-api"

# Built-in resources the manifests grant access to, and whether they are namespaced.
# (The project's own come from the rendered CRDs' scope.)
BUILTIN_SCOPE = {
    ("", "events"): True,
    ("coordination.k8s.io", "leases"): True,
    ("apiextensions.k8s.io", "customresourcedefinitions"): False,
    ("", "namespaces"): False,
}
CLUSTER_SCOPED_KINDS = {
    "Namespace",
    "CustomResourceDefinition",
    "ClusterRole",
    "ClusterRoleBinding",
}
METRICS_PORT = 8080


@pytest.fixture(scope="module")
def kubectl() -> str:
    found = find_kubectl()
    if found is None:
        pytest.skip("no kubectl on PATH and the test control plane's kubectl cannot be built")
    return found


@pytest.fixture(scope="module")
def base(kubectl: str) -> list[Obj]:
    return render(kubectl, BASE)


@pytest.fixture(scope="module")
def namespaced(kubectl: str) -> list[Obj]:
    return render(kubectl, NAMESPACED)


@pytest.fixture(scope="module", params=["base", "namespaced"])
def rendered(request: pytest.FixtureRequest, base: list[Obj], namespaced: list[Obj]) -> list[Obj]:
    objects: list[Obj] = base if request.param == "base" else namespaced
    return objects


def deployment(objects: list[Obj]) -> Obj:
    return one(objects, "Deployment", "job-operator")


def container(objects: list[Obj]) -> Obj:
    (only,) = deployment(objects)["spec"]["template"]["spec"]["containers"]
    result: Obj = only
    return result


def kubernetes_version() -> str:
    version: str = kubernetes_validate.latest_version()
    return version


# --- rendering and schemas ------------------------------------------------------------


def test_top_level_kustomization_is_the_base(kubectl: str, base: list[Obj]) -> None:
    assert render(kubectl, DEPLOY) == base


def test_base_has_everything_an_install_needs(base: list[Obj]) -> None:
    kinds = sorted((o["kind"], o["metadata"]["name"]) for o in base)
    assert kinds == sorted(
        [
            ("Namespace", INSTALL_NAMESPACE),
            ("CustomResourceDefinition", "jobs.job-operator.dev"),
            ("CustomResourceDefinition", "executorclusters.job-operator.dev"),
            ("ServiceAccount", SERVICE_ACCOUNT),
            ("ClusterRole", "job-operator"),
            ("ClusterRoleBinding", "job-operator"),
            ("Role", "job-operator-leader-election"),
            ("RoleBinding", "job-operator-leader-election"),
            ("ClusterRole", "job-operator-edit"),
            ("ClusterRole", "job-operator-view"),
            ("Deployment", "job-operator"),
            ("Service", "job-operator-metrics"),
            ("PodDisruptionBudget", "job-operator"),
            ("ServiceAccount", "job-operator-api"),
            ("ClusterRole", "job-operator-api"),
            ("ClusterRoleBinding", "job-operator-api"),
            ("Deployment", "job-operator-api"),
            ("Service", "job-operator-api"),
            ("PodDisruptionBudget", "job-operator-api"),
        ]
    )


def test_crds_are_the_generated_ones(base: list[Obj]) -> None:
    from job_operator import crd

    for generated in (crd.job_crd(), crd.executor_crd()):
        (shipped,) = find(base, "CustomResourceDefinition", generated["metadata"]["name"])
        assert shipped["spec"] == generated["spec"]


@pytest.mark.parametrize("overlay", ["base", "namespaced"])
def test_every_object_is_valid_for_the_newest_kubernetes(
    overlay: str,
    base: list[Obj],
    namespaced: list[Obj],
) -> None:
    version = kubernetes_version()
    errors = []
    for obj in base if overlay == "base" else namespaced:
        what = f"{obj['kind']}/{obj['metadata']['name']}"
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as error:
            path = "/".join(str(p) for p in error.path)
            errors.append(f"{what}: {path}: {error.message}")
        except kubernetes_validate.SchemaNotFoundError as error:
            errors.append(f"{what}: {error.message}")
    assert not errors, f"invalid for Kubernetes {version}:\n" + "\n".join(errors)


def test_namespaced_objects_are_in_the_install_namespace(rendered: list[Obj]) -> None:
    for obj in rendered:
        namespace = obj["metadata"].get("namespace")
        if obj["kind"] in CLUSTER_SCOPED_KINDS:
            assert namespace is None, obj["metadata"]
        else:
            assert namespace == INSTALL_NAMESPACE, obj["metadata"]


# --- the Deployment -------------------------------------------------------------------


def test_two_replicas_one_active_through_the_lease(rendered: list[Obj]) -> None:
    spec = deployment(rendered)["spec"]
    assert spec["replicas"] == 2
    c = container(rendered)
    assert "--no-leader-elect" not in c["args"]
    env = {e["name"]: e for e in c.get("env") or []}
    assert env["POD_NAMESPACE"]["valueFrom"] == {"fieldRef": {"fieldPath": "metadata.namespace"}}
    # The leader-election Role names the Lease the operator uses by default.
    defaults = cli.parser().parse_args(["run"])
    assert not any(a.startswith("--lease-name") for a in c["args"])
    lease_rules = [
        r for r in one(rendered, "Role", "job-operator-leader-election")["rules"]
        if r.get("resourceNames")
    ]  # fmt: skip
    assert [r["resourceNames"] for r in lease_rules] == [[defaults.lease_name]]


def test_image_is_local_and_pinned(rendered: list[Obj]) -> None:
    c = container(rendered)
    assert c["image"] == IMAGE
    assert c["imagePullPolicy"] == "IfNotPresent"


def test_probes_hit_the_operator_endpoints_on_the_metrics_port(rendered: list[Obj]) -> None:
    c = container(rendered)
    ports = {p["name"]: p["containerPort"] for p in c["ports"]}
    assert ports == {"metrics": METRICS_PORT}
    assert f"--metrics-port={METRICS_PORT}" in c["args"]
    for probe, path in (("livenessProbe", "/healthz"), ("readinessProbe", "/readyz")):
        get = c[probe]["httpGet"]
        assert get["path"] == path
        assert ports.get(get["port"], get["port"]) == METRICS_PORT


def quantity(value: str | int | float) -> float:
    """A Kubernetes resource quantity as a number (enough of the grammar for these files)."""
    text = str(value)
    suffixes = {"m": 1e-3, "Ki": 2**10, "Mi": 2**20, "Gi": 2**30, "k": 1e3, "M": 1e6, "G": 1e9}
    match = re.fullmatch(r"([0-9.]+)([A-Za-z]*)", text)
    assert match, text
    return float(match[1]) * (suffixes[match[2]] if match[2] else 1)


def test_resources_have_requests_and_limits(rendered: list[Obj]) -> None:
    resources = container(rendered)["resources"]
    for name in ("cpu", "memory"):
        request, limit = resources["requests"][name], resources["limits"][name]
        assert 0 < quantity(request) <= quantity(limit), (name, request, limit)


def test_security_context_is_restricted(rendered: list[Obj]) -> None:
    pod = deployment(rendered)["spec"]["template"]["spec"]
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["runAsUser"] > 0
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    for host in ("hostNetwork", "hostPID", "hostIPC"):
        assert not pod.get(host), host
    sc = container(rendered)["securityContext"]
    assert sc["runAsNonRoot"] is True
    assert sc["readOnlyRootFilesystem"] is True
    assert sc["allowPrivilegeEscalation"] is False
    assert sc.get("privileged", False) is False
    assert sc["capabilities"] == {"drop": ["ALL"]}
    assert sc["seccompProfile"] == {"type": "RuntimeDefault"}
    # The namespace enforces the same: the restricted Pod Security Standard.
    labels = one(rendered, "Namespace")["metadata"]["labels"]
    assert labels["pod-security.kubernetes.io/enforce"] == "restricted"


def test_read_only_root_has_a_writable_tmp(rendered: list[Obj]) -> None:
    pod = deployment(rendered)["spec"]["template"]["spec"]
    mounts = {m["mountPath"]: m["name"] for m in container(rendered)["volumeMounts"]}
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]]


def test_graceful_shutdown_has_time_to_release_the_lease(rendered: list[Obj]) -> None:
    pod = deployment(rendered)["spec"]["template"]["spec"]
    # Long enough to stop the watches, finish running reconciles and release the Lease.
    assert pod["terminationGracePeriodSeconds"] >= 15
    assert not container(rendered).get("lifecycle", {}).get("preStop")  # SIGTERM does it all


def test_service_account_service_and_budget_match_the_pods(rendered: list[Obj]) -> None:
    dep = deployment(rendered)
    pod_labels = dep["spec"]["template"]["metadata"]["labels"]
    selector = dep["spec"]["selector"]["matchLabels"]
    assert selector.items() <= pod_labels.items()
    assert dep["spec"]["template"]["spec"]["serviceAccountName"] == SERVICE_ACCOUNT
    one(rendered, "ServiceAccount", SERVICE_ACCOUNT)
    service = one(rendered, "Service", "job-operator-metrics")
    assert service["spec"]["selector"].items() <= pod_labels.items()
    (port,) = service["spec"]["ports"]
    assert (port["name"], port["port"], port["targetPort"]) == ("metrics", METRICS_PORT, "metrics")
    budget = one(rendered, "PodDisruptionBudget", "job-operator")
    assert budget["spec"]["selector"]["matchLabels"].items() <= pod_labels.items()
    assert 0 < budget["spec"]["minAvailable"] < dep["spec"]["replicas"]


# --- RBAC -----------------------------------------------------------------------------


def test_no_wildcards_or_non_resource_urls(rendered: list[Obj]) -> None:
    assert wildcards(rendered) == []


def test_bindings_name_the_operator_service_account(rendered: list[Obj]) -> None:
    """Every binding of the install is the operator's, or the HTTP API's read-only one
    (the user roles are aggregated)."""
    bindings = find(rendered, "RoleBinding") + find(rendered, "ClusterRoleBinding")
    assert bindings
    for binding in bindings:
        ref = binding["roleRef"]
        (role,) = find(rendered, ref["kind"], ref["name"])
        account = binding["subjects"][0]["name"]
        assert binding["subjects"] == [
            {"kind": "ServiceAccount", "name": account, "namespace": INSTALL_NAMESPACE}
        ]
        assert account in (SERVICE_ACCOUNT, API_SERVICE_ACCOUNT)
        if account == API_SERVICE_ACCOUNT:
            assert role["rules"] == [
                {
                    "apiGroups": ["job-operator.dev"],
                    "resources": ["jobs"],
                    "verbs": ["get", "list", "watch"],
                }
            ]


def test_the_api_runs_as_its_own_read_only_account_hardened_as_the_operator(
    rendered: list[Obj],
) -> None:
    api = one(rendered, "Deployment", "job-operator-api")
    pod = api["spec"]["template"]["spec"]
    assert api["spec"]["replicas"] == 2
    assert pod["serviceAccountName"] == API_SERVICE_ACCOUNT
    assert (
        pod["securityContext"]
        == deployment(rendered)["spec"]["template"]["spec"]["securityContext"]
    )
    (c,) = pod["containers"]
    assert c["securityContext"] == container(rendered)["securityContext"]
    assert "--tls-cert-file=/etc/job-operator-api/tls/tls.crt" in c["args"]
    assert c["readinessProbe"]["httpGet"]["scheme"] == "HTTPS"
    budget = one(rendered, "PodDisruptionBudget", "job-operator-api")
    service = one(rendered, "Service", "job-operator-api")
    labels = api["spec"]["template"]["metadata"]["labels"]
    assert budget["spec"]["selector"]["matchLabels"].items() <= labels.items()
    assert service["spec"]["selector"].items() <= labels.items()
    assert not (deployment(rendered)["spec"]["selector"]["matchLabels"].items() <= labels.items())


def namespaced_resource(base: list[Obj], group: str, resource: str) -> bool:
    top = resource.split("/")[0]
    for crd in find(base, "CustomResourceDefinition"):
        if (crd["spec"]["group"], crd["spec"]["names"]["plural"]) == (group, top):
            return bool(crd["spec"]["scope"] == "Namespaced")
    assert (group, top) in BUILTIN_SCOPE, f"scope of {group}/{top} unknown: add it to the table"
    return BUILTIN_SCOPE[(group, top)]


def test_namespaced_overlay_has_no_cluster_permissions(namespaced: list[Obj]) -> None:
    # Its only ClusterRoles are the users' (aggregated into view/edit/admin, bound by
    # nothing here); the operator's own permissions are a Role.
    assert sorted(o["metadata"]["name"] for o in find(namespaced, "ClusterRole")) == sorted(
        USER_ROLES
    )
    assert not find(namespaced, "ClusterRoleBinding")


def test_namespaced_role_grants_the_cluster_role_rules_for_namespaced_resources(
    base: list[Obj],
    namespaced: list[Obj],
) -> None:
    cluster = role_grants(one(base, "ClusterRole", "job-operator"))
    wanted = {g.key() for g in cluster if namespaced_resource(base, g.group, g.resource)}
    role = one(namespaced, "Role", "job-operator")
    assert {g.key() for g in role_grants(role)} == wanted
    # Taken together, the namespaced install grants in its namespace what the cluster-wide
    # install grants there (minus the cluster-scoped CRD watch, which it does not need).
    everywhere = {
        g.key()
        for g in grants_of(base, SERVICE_ACCOUNT, INSTALL_NAMESPACE)
        if namespaced_resource(base, g.group, g.resource)
    }
    confined = {g.key() for g in grants_of(namespaced, SERVICE_ACCOUNT, INSTALL_NAMESPACE)}
    assert confined == everywhere


def test_namespaced_overlay_watches_only_its_own_namespace(namespaced: list[Obj]) -> None:
    c = container(namespaced)
    # Kubernetes expands $(POD_NAMESPACE) in args from the container's env.
    assert "--namespace=$(POD_NAMESPACE)" in c["args"]
    assert "--all-namespaces" not in c["args"]
    assert "POD_NAMESPACE" in {e["name"] for e in c["env"]}
    args = cli.parser().parse_args(["run", "--namespace=ns"])
    assert args.namespace == ["ns"]


def test_namespaced_overlay_moves_to_another_namespace_whole(
    kubectl: str,
    tmp_path: Path,
) -> None:
    objects = render_in_namespace(kubectl, NAMESPACED, "data-jobs", tmp_path / "k")
    assert one(objects, "Namespace")["metadata"]["name"] == "data-jobs"
    for obj in objects:
        if obj["kind"] not in CLUSTER_SCOPED_KINDS:
            assert obj["metadata"]["namespace"] == "data-jobs", obj["metadata"]
    assert grants_of(objects, SERVICE_ACCOUNT, "data-jobs")
    assert all(g.namespace == "data-jobs" for g in grants_of(objects, SERVICE_ACCOUNT, "data-jobs"))


def test_cluster_install_runs_cluster_wide(base: list[Obj]) -> None:
    args: list[Any] = container(base)["args"]
    assert args[0] == "run"
    assert "--all-namespaces" in args
    assert not any(a.startswith(("-n", "--namespace")) for a in args)


# --- the users' roles -------------------------------------------------------------------

USER_ROLES = {
    "job-operator-view": ["view"],
    "job-operator-edit": ["edit", "admin"],
}
JOB = ("job-operator.dev", "jobs")
READ = {"get", "list", "watch"}


def verbs_on(role: Obj, group: str, resource: str) -> set[str]:
    return {g.verb for g in role_grants(role) if (g.group, g.resource) == (group, resource)}


@pytest.mark.parametrize("name", sorted(USER_ROLES))
def test_user_roles_aggregate_into_the_built_in_roles(rendered: list[Obj], name: str) -> None:
    labels = one(rendered, "ClusterRole", name)["metadata"]["labels"]
    aggregated = sorted(
        key.rpartition("/aggregate-to-")[2]
        for key, value in labels.items()
        if key.startswith("rbac.authorization.k8s.io/aggregate-to-") and value == "true"
    )
    assert aggregated == sorted(USER_ROLES[name])


def test_an_editor_may_reschedule_and_a_viewer_may_only_read(base: list[Obj]) -> None:
    """Requesting a reschedule or a cancel is `patch` on jobs (an annotation)."""
    view = one(base, "ClusterRole", "job-operator-view")
    edit = one(base, "ClusterRole", "job-operator-edit")
    assert verbs_on(view, *JOB) == READ
    assert "patch" in verbs_on(edit, *JOB)
    assert verbs_on(edit, *JOB) >= READ  # the CLI watches the job it asked about
    for role in (view, edit):
        # Only the operator writes a Job's status; only it and the provisioner, clusters.
        for resource in ("jobs/status", "executorclusters", "executorclusters/status"):
            assert verbs_on(role, "job-operator.dev", resource) <= READ, (role, resource)
        assert {g.group for g in role_grants(role)} == {"job-operator.dev"}


# --- the provisioner's and the simulator's roles ---------------------------------------

PROVISIONER_GRANTS = {
    ("get", "executorclusters"),
    ("list", "executorclusters"),
    ("watch", "executorclusters"),
    ("patch", "executorclusters/status"),
}


@pytest.fixture(scope="module")
def simulator_tree(kubectl: str) -> list[Obj]:
    return render(kubectl, SIMULATOR)


def test_provisioner_role_is_what_a_provisioner_needs(kubectl: str) -> None:
    objects = render(kubectl, PROVISIONER)
    role = one(objects, "ClusterRole", "job-operator-provisioner")
    assert [o["kind"] for o in objects] == ["ClusterRole"]  # the binding is the user's
    assert {(g.verb, g.resource) for g in role_grants(role)} == PROVISIONER_GRANTS
    assert {g.group for g in role_grants(role)} == {"job-operator.dev"}


def test_simulator_is_a_provisioner_that_reads_jobs(simulator_tree: list[Obj]) -> None:
    assert wildcards(simulator_tree) == []
    one(simulator_tree, "ServiceAccount", SIMULATOR_ACCOUNT)
    grants = grants_of(simulator_tree, SIMULATOR_ACCOUNT, INSTALL_NAMESPACE)
    assert {(g.verb, g.resource) for g in grants} == PROVISIONER_GRANTS | {("get", "jobs")}
    assert all(g.namespace is None and not g.names for g in grants)


def test_simulator_objects_are_valid_for_the_newest_kubernetes(
    simulator_tree: list[Obj],
) -> None:
    version = kubernetes_version()
    for obj in simulator_tree:
        kubernetes_validate.validate(obj, version, strict=True)


# --- the image ------------------------------------------------------------------------


def test_dockerfile_matches_the_deployment(base: list[Obj]) -> None:
    text = (REPO / "Dockerfile").read_text()
    lines = [
        line.strip()
        for line in text.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    (image_arg,) = [line for line in lines if line.startswith("ARG PYTHON_IMAGE=")]
    base_image = image_arg.split("=", 1)[1]
    # A plain Docker Hub name (no registry host) and a pinned patch-level 3.11 slim tag.
    assert re.fullmatch(r"python:3\.11\.\d+-slim(-[a-z]+)?", base_image), base_image
    froms = [line for line in lines if line.startswith("FROM ")]
    assert len(froms) == 2
    assert all("${PYTHON_IMAGE}" in line for line in froms)
    (user,) = [line.split()[1] for line in lines if line.startswith("USER ")]
    uid = user.split(":")[0]
    pod = deployment(base)["spec"]["template"]["spec"]
    assert uid.isdigit()
    assert int(uid) == pod["securityContext"]["runAsUser"] != 0
    assert f"EXPOSE {METRICS_PORT}" in lines
    assert 'ENTRYPOINT ["job-operator"]' in lines
    assert ".[dev]" not in text
    assert "-e ." not in text
