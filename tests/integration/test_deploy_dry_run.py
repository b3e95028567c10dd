"""deploy/ as an API server sees it: a server-side dry run (`kubectl apply --dry-run=server`).

On the suite's own API server only the CRDs can go through it: that server serves CRDs
and a small core API, not apps/v1, rbac.authorization.k8s.io/v1, policy/v1 and the rest,
so a Deployment or a ClusterRole would be refused as an unknown kind, not validated
(tests/unit/test_deploy.py validates those offline against the published schemas).
On an external cluster (JOB_OPERATOR_TEST_KUBECONFIG=1, e.g. `make kind-e2e`) every
object goes through it.
"""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.deploy_support import BASE, INSTALL_NAMESPACE, NAMESPACED, Obj, render
from tests.helpers import Kube


def dry_run(kube: Kube, objects: list[Obj]) -> str:
    out = kube.kubectl_run(
        "apply", "--dry-run=server", "-o", "name", "-f", "-", input=yaml.safe_dump_all(objects)
    )
    return out.stdout


def names_of(objects: list[Obj]) -> list[str]:
    """As `kubectl apply -o name` prints them."""
    result = []
    for obj in objects:
        group = obj["apiVersion"].rpartition("/")[0]
        kind = obj["kind"].lower() + (f".{group}" if group else "")
        result.append(f"{kind}/{obj['metadata']['name']}")
    return result


def live_versions(kube: Kube, crds: list[Obj]) -> list[str]:
    """The resourceVersion of each CRD in the cluster ('' where there is none)."""
    return [
        kube.kubectl_run(
            "get", "crd", crd["metadata"]["name"], "--ignore-not-found",
            "-o", "jsonpath={.metadata.resourceVersion}",
        ).stdout
        for crd in crds
    ]  # fmt: skip


@pytest.mark.parametrize("path", [BASE, NAMESPACED], ids=["base", "namespaced"])
def test_crds_pass_a_server_side_dry_run(kube: Kube, path: Path) -> None:
    objects = render(kube.kubectl, path)
    crds = [o for o in objects if o["kind"] == "CustomResourceDefinition"]
    assert len(crds) == 2
    before = live_versions(kube, crds)
    printed = dry_run(kube, crds).split()
    assert sorted(printed) == sorted(names_of(crds))
    assert live_versions(kube, crds) == before, "the dry run changed the cluster"


def test_everything_passes_a_server_side_dry_run_on_a_full_cluster(kube: Kube) -> None:
    objects = render(kube.kubectl, BASE)
    served = set(kube.kubectl_run("api-versions").stdout.split())
    missing = sorted({o["apiVersion"] for o in objects} - served)
    if missing:
        pytest.skip(f"this API server does not serve {', '.join(missing)} (see above)")
    exists = kube.kubectl_run(
        "get", "namespace", INSTALL_NAMESPACE, "--ignore-not-found", "-o", "name"
    ).stdout.strip()
    if not exists:  # a dry run creates no namespace for the namespaced objects to go into
        objects = [o for o in objects if "namespace" not in o["metadata"]]
    printed = dry_run(kube, objects).split()
    assert sorted(printed) == sorted(names_of(objects))
