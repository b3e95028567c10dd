"""Fixtures: the cluster (``kube``), a fresh namespace per test (``namespace``), and users
with credentials of their own (``mint_identity``, see tests/identities.py).

By default the session starts its own API server (testenv.controlplane, audit log on:
``AUDIT_POLICY``). With ``JOB_OPERATOR_TEST_KUBECONFIG=1`` it uses the cluster
``$KUBECONFIG`` names (kind, a real cluster) and the ``kubectl`` on PATH instead.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import secrets
import shutil
import signal
from collections.abc import Iterator
from pathlib import Path

import pytest

from job_operator.names import EXECUTOR_PLURAL, GROUP, JOB_PLURAL
from testenv.build import ControlPlaneError, ensure_built
from testenv.controlplane import ControlPlane
from tests.helpers import Kube
from tests.identities import IdentityMinter

INTEGRATION_DIR = Path(__file__).parent / "integration"

# Every request at level Metadata (who did what to which object), and ExecutorCluster
# creations at level Request: with the object, so a storm's clusters can be followed to
# their jobs and attempts (tests.invariants.ClusterLedger).
AUDIT_POLICY = f"""\
apiVersion: audit.k8s.io/v1
kind: Policy
rules:
- level: Request
  verbs: [create]
  resources:
  - group: {GROUP}
    resources: [{EXECUTOR_PLURAL}]
- level: Metadata
"""

# Namespaced custom resources the ``namespace`` fixture deletes (when their CRD exists and
# is namespaced) before it deletes the namespace; finalizers left on them are removed, so
# cleanup also works with no operator running. Extend it for new kinds.
CLEANUP_RESOURCES: list[str] = [
    f"{JOB_PLURAL}.{GROUP}",
    f"{EXECUTOR_PLURAL}.{GROUP}",
    "widgets.test.job-operator.dev",
]


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    for item in items:
        if INTEGRATION_DIR in item.path.parents:
            item.add_marker(pytest.mark.integration)


def _external_kubeconfig() -> Path:
    env = os.environ.get("KUBECONFIG", "")
    first = next((p for p in env.split(os.pathsep) if p), "")
    return Path(first).expanduser() if first else Path.home() / ".kube" / "config"


@pytest.fixture(scope="session")
def kube() -> Iterator[Kube]:
    """The cluster for this test session."""
    if os.environ.get("JOB_OPERATOR_TEST_KUBECONFIG") == "1":
        yield Kube(kubeconfig=_external_kubeconfig(), kubectl=shutil.which("kubectl") or "kubectl")
        return
    try:
        control_plane = ControlPlane(ensure_built(), audit=True, audit_policy=AUDIT_POLICY)
    except ControlPlaneError as e:
        pytest.fail(f"could not build the control plane: {e}", pytrace=False)
    # SIGTERM (CI's time limit, a terminal closed) as an interrupt: pytest then still runs
    # this fixture's teardown, so etcd and the server (own process groups) do not outlive it.
    previous = signal.getsignal(signal.SIGTERM)
    if previous is signal.SIG_DFL:
        signal.signal(signal.SIGTERM, signal.default_int_handler)
    try:
        control_plane.start()
    except ControlPlaneError as e:
        # start() stopped what it started; its data folder stays, for the logs named in e.
        pytest.fail(f"could not start the control plane: {e}", pytrace=False)
    except BaseException:
        control_plane.stop()
        raise
    try:
        yield Kube(
            kubeconfig=control_plane.kubeconfig,
            kubectl=str(control_plane.kubectl),
            control_plane=control_plane,
            kubectl_cache_dir=control_plane.kubeconfig.parent / "kubectl-cache",
        )
    finally:
        control_plane.stop()
        if previous is signal.SIG_DFL:
            signal.signal(signal.SIGTERM, signal.SIG_DFL)


def _namespace_name(test_name: str) -> str:
    slug = re.sub(r"[^a-z0-9]+", "-", test_name.lower()).strip("-")[:40].strip("-")
    return f"t-{slug}-{secrets.token_hex(3)}"


def _cleanup_namespace(kube: Kube, namespace: str) -> None:
    found = kube.kubectl_run(
        "get", "crd", *CLEANUP_RESOURCES, "--ignore-not-found", "-o", "json", check=False
    )
    kinds: list[str] = []
    if found.returncode == 0 and found.stdout.strip():
        for crd in json.loads(found.stdout).get("items", []):
            if crd.get("spec", {}).get("scope") == "Namespaced":
                kinds.append(crd["metadata"]["name"])
    if kinds:
        joined = ",".join(kinds)
        kube.kubectl_run(
            "delete", joined, "--all", "-n", namespace, "--wait=false", "--ignore-not-found",
            check=False,
        )  # fmt: skip
        left = kube.kubectl_run("get", joined, "-n", namespace, "-o", "name", check=False)
        for obj in left.stdout.split():
            kube.kubectl_run(
                "patch", obj, "-n", namespace, "--type=merge",
                "-p", '{"metadata":{"finalizers":null}}',
                check=False,
            )  # fmt: skip
    kube.kubectl_run("delete", "namespace", namespace, "--wait=false", "--ignore-not-found")


@contextlib.contextmanager
def fresh_namespace(kube: Kube, purpose: str) -> Iterator[str]:
    """A new namespace named after ``purpose``, deleted (with its custom resources) after."""
    name = _namespace_name(purpose)
    kube.kubectl_run("create", "namespace", name)
    try:
        yield name
    finally:
        _cleanup_namespace(kube, name)


@pytest.fixture
def namespace(kube: Kube, request: pytest.FixtureRequest) -> Iterator[str]:
    """A fresh namespace for one test, deleted (with its custom resources) afterwards."""
    with fresh_namespace(kube, request.node.name) as name:
        yield name


@pytest.fixture
def mint_identity(kube: Kube, tmp_path: Path) -> Iterator[IdentityMinter]:
    """``mint_identity(name, groups=())`` -> an Identity (token, kubeconfig) for this test.

    Any user on the suite's control plane; only service accounts on an external cluster
    (others skip the test). Service accounts and namespaces it created are deleted after.
    """
    minter = IdentityMinter(kube, tmp_path / "identities")
    try:
        yield minter
    finally:
        minter.cleanup()
