"""deploy/ as an API server sees it: a server-side dry run (`kubectl apply --dry-run=server`)
of every object each kustomization under deploy/ renders, installed into the test's own
namespace (a dry run creates no namespace, and a cluster refuses objects in a missing one).

Each kind this API server serves goes through it: on the suite's own server the CRDs,
the Namespace and the RBAC kinds (stand-ins with the built-in kinds' schemas,
hack/controlplane/README.md). The kinds it does not serve (apps/v1 Deployment,
policy/v1 PodDisruptionBudget, v1 Service and ServiceAccount) are named in a skipped test:
they go through on an external cluster (JOB_OPERATOR_TEST_KUBECONFIG=1), and
tests/unit/test_deploy.py validates them offline against the published schemas.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.deploy_support import BASE, NAMESPACED, PROVISIONER, SIMULATOR, Obj, render_in_namespace
from tests.helpers import Kube
from tests.integration.conftest import served_kinds

KUSTOMIZATIONS = [BASE, NAMESPACED, PROVISIONER, SIMULATOR]
IDS = ["base", "namespaced", "provisioner", "simulator"]
VERSIONS = r"{range .items[*]}{.kind}/{.metadata.name}={.metadata.resourceVersion}{'\n'}{end}"


def dry_run(kube: Kube, objects: list[Obj]) -> list[str]:
    out = kube.kubectl_run(
        "apply", "--dry-run=server", "-o", "name", "-f", "-", input=yaml.safe_dump_all(objects)
    )
    return sorted(out.stdout.split())


def names_of(objects: list[Obj]) -> list[str]:
    """As `kubectl apply -o name` prints them."""
    result = []
    for obj in objects:
        group = obj["apiVersion"].rpartition("/")[0]
        kind = obj["kind"].lower() + (f".{group}" if group else "")
        result.append(f"{kind}/{obj['metadata']['name']}")
    return sorted(result)


def live_versions(kube: Kube, objects: list[Obj]) -> str:
    """Each object's kind, name and resourceVersion in the cluster (absent ones left out)."""
    return kube.kubectl_run(
        "get", "--ignore-not-found", "-f", "-", "-o", f"jsonpath={VERSIONS}",
        input=yaml.safe_dump_all(objects),
    ).stdout  # fmt: skip


def split_by_service(kube: Kube, objects: list[Obj]) -> tuple[list[Obj], list[str]]:
    """The objects of kinds the server serves, and the kinds ("apiVersion Kind") it does not."""
    served = served_kinds(kube)
    chosen = [o for o in objects if (o["apiVersion"], o["kind"]) in served]
    missing = {f"{o['apiVersion']} {o['kind']}" for o in objects if o not in chosen}
    return chosen, sorted(missing)


def rendered(kube: Kube, path: Path, namespace: str, tmp_path: Path) -> list[Obj]:
    return render_in_namespace(kube.kubectl, path, namespace, tmp_path / "kustomization")


@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=IDS)
def test_every_served_kind_passes_a_server_side_dry_run_and_changes_nothing(
    kube: Kube, namespace: str, tmp_path: Path, path: Path
) -> None:
    objects, _ = split_by_service(kube, rendered(kube, path, namespace, tmp_path))
    assert {o["kind"] for o in objects} & {"ClusterRole", "CustomResourceDefinition"}
    before = live_versions(kube, objects)
    assert dry_run(kube, objects) == names_of(objects)
    assert live_versions(kube, objects) == before, "the dry run changed the cluster"


@pytest.mark.parametrize("path", KUSTOMIZATIONS, ids=IDS)
def test_everything_passes_a_server_side_dry_run_on_a_full_cluster(
    kube: Kube, namespace: str, tmp_path: Path, path: Path
) -> None:
    objects = rendered(kube, path, namespace, tmp_path)
    _, missing = split_by_service(kube, objects)
    if missing:
        pytest.skip(f"this API server does not serve {', '.join(missing)}")
    assert dry_run(kube, objects) == names_of(objects)
