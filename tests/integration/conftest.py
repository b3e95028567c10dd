"""Integration fixtures: the CRDs installed, and an operator and a simulator per test.

Each test gets its own namespace, and its own operator and simulator processes
scoped to it (`-n NAMESPACE`), so tests can stop, kill and restart them freely.
They are the real `job-operator` program, run as a person would run it, and as the
identities a real install gives them (`installed`): the operator as the ServiceAccount
job-operator-system/job-operator bound by deploy/'s roles, the simulator as
job-operator-system/executor-simulator bound by deploy/simulator's. Only the harness
itself (kubectl in the tests, the `kube` fixture) is an administrator.
"""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest
import yaml
from prometheus_client.parser import text_string_to_metric_families

from job_operator import names
from testenv.controlplane import Identity
from tests.deploy_support import (
    BASE,
    INSTALL_NAMESPACE,
    SERVICE_ACCOUNT,
    SIMULATOR,
    SIMULATOR_ACCOUNT,
    Obj,
    render,
)
from tests.helpers import Kube, wait_for
from tests.identities import IdentityMinter

REPO = Path(__file__).resolve().parents[2]
CRD_NAMES = (f"{names.JOB_PLURAL}.{names.GROUP}", f"{names.EXECUTOR_PLURAL}.{names.GROUP}")

# Fast settings for tests: short backoff, frequent sweeps.
SWEEP_INTERVAL = 2.0
OPERATOR_TEST_FLAGS = (
    "--backoff-base",
    "0.2",
    "--backoff-cap",
    "1",
    "--sweep-interval",
    f"{SWEEP_INTERVAL:g}",
)


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


@pytest.fixture(scope="session")
def crds(kube: Kube) -> None:
    """The project's CRDs, applied from crds/ and Established."""
    kube.kubectl_run("apply", "--server-side", "--force-conflicts", "-f", str(REPO / "crds"))
    kube.kubectl_run(
        "wait",
        "--for=condition=Established",
        "--timeout=60s",
        *(f"crd/{name}" for name in CRD_NAMES),
    )


@pytest.fixture(scope="session")
def leases(kube: Kube) -> None:
    """coordination.k8s.io Leases: built into real clusters; on the suite's control
    plane, served by a stand-in CRD with the same group, version and fields."""
    found = kube.kubectl_run("api-resources", "--api-group=coordination.k8s.io", "-o", "name")
    if "leases" in found.stdout:
        return
    kube.kubectl_run("apply", "-f", str(REPO / "hack" / "controlplane" / "leases-crd.yaml"))
    kube.kubectl_run(
        "wait", "--for=condition=Established", "--timeout=60s", "crd/leases.coordination.k8s.io"
    )


OPERATOR_USER = f"system:serviceaccount:{INSTALL_NAMESPACE}:{SERVICE_ACCOUNT}"
SIMULATOR_USER = f"system:serviceaccount:{INSTALL_NAMESPACE}:{SIMULATOR_ACCOUNT}"
LEASE_NAME = "job-operator-leader"  # the one the leader-election Role names
# What of deploy/ the suite installs: who the operator and the simulator are and what they
# may do. Not the Deployment: the tests run both as processes.
IDENTITY_KINDS = ("Namespace", "ServiceAccount", "ClusterRole", "ClusterRoleBinding", "Role",
                  "RoleBinding")  # fmt: skip


def served_kinds(kube: Kube) -> set[tuple[str, str]]:
    """(apiVersion, kind) of every resource the cluster serves."""
    out = kube.kubectl_run("api-resources", "--no-headers").stdout
    return {(line.split()[-3], line.split()[-1]) for line in out.splitlines() if line.strip()}


def apply_identity_objects(kube: Kube, objects: list[Obj]) -> list[Obj]:
    """Apply the ServiceAccounts and RBAC objects (and their Namespaces) among `objects`,
    those the cluster serves (the suite's server serves no ServiceAccounts: a token names
    one without it); return what was applied."""
    served = served_kinds(kube)
    chosen = [
        o for o in objects
        if o["kind"] in IDENTITY_KINDS and (o["apiVersion"], o["kind"]) in served
    ]  # fmt: skip
    for obj in chosen:
        # Created, not applied: the suite's server takes no server-side apply of a Namespace.
        name = obj["metadata"]["name"]
        if (
            obj["kind"] == "Namespace"
            and not kube.kubectl_run(
                "get", "namespace", name, "--ignore-not-found", "-o", "name"
            ).stdout.strip()
        ):
            kube.kubectl_run("create", "namespace", name)
    rest = [o for o in chosen if o["kind"] != "Namespace"]
    if rest:
        kube.kubectl_run(
            "apply", "--server-side", "--force-conflicts", "-f", "-",
            input=yaml.safe_dump_all(rest),
        )  # fmt: skip
    return chosen


@dataclass(frozen=True)
class Installed:
    """The identities the operator and the simulator run as, and what deploy/ gave them."""

    operator: Identity
    simulator: Identity
    objects: list[Obj]


@pytest.fixture(scope="session")
def installed(
    kube: Kube, crds: None, leases: None, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[Installed]:
    """deploy/'s ServiceAccounts and roles for the operator (the cluster-wide install) and
    the simulator (deploy/simulator) applied, and a token minted for each."""
    objects = apply_identity_objects(
        kube, render(kube.kubectl, BASE) + render(kube.kubectl, SIMULATOR)
    )
    minter = IdentityMinter(kube, tmp_path_factory.mktemp("identities"))
    try:
        yield Installed(minter(OPERATOR_USER), minter(SIMULATOR_USER), objects)
    finally:
        minter.cleanup()


@dataclass
class Process:
    """A job-operator subprocess, with its log kept for failure reports."""

    argv: list[str]
    env: dict[str, str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = None
    starts: int = 0

    def start(self) -> None:
        self.starts += 1
        log = self.log_path.open("ab")
        log.write(f"--- start {self.starts}: {' '.join(self.argv)}\n".encode())
        log.flush()
        self.proc = subprocess.Popen(
            self.argv,
            env=self.env,
            stdout=log,
            stderr=log,
            stdin=subprocess.DEVNULL,
            start_new_session=True,
        )
        log.close()

    def stop(self, timeout: float = 15.0) -> None:
        """SIGTERM, then SIGKILL past the deadline."""
        if self.proc is None or self.proc.poll() is not None:
            return
        self.proc.send_signal(signal.SIGTERM)
        try:
            self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.kill()

    def kill(self) -> None:
        """SIGKILL: a crash, as far as the process can tell."""
        if self.proc is not None and self.proc.poll() is None:
            self.proc.kill()
            self.proc.wait(10)

    def running(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def log(self) -> str:
        return self.log_path.read_text(errors="replace") if self.log_path.exists() else ""


class Scrape:
    """One scrape of /metrics: sample values by name and labels (absent samples are 0)."""

    def __init__(self, text: str) -> None:
        self.types: dict[str, str] = {}
        self.samples: dict[tuple[str, frozenset[tuple[str, str]]], float] = {}
        for family in text_string_to_metric_families(text):
            self.types[family.name] = family.type
            for sample in family.samples:
                self.samples[(sample.name, frozenset(sample.labels.items()))] = sample.value

    def value(self, name: str, **labels: str) -> float:
        return self.samples.get((name, frozenset(labels.items())), 0.0)

    def total(self, name: str) -> float:
        """Summed over all label values."""
        return sum(v for (n, _), v in self.samples.items() if n == name)


@dataclass
class Operator(Process):
    metrics_port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.metrics_port}{path}"

    def ready(self) -> bool:
        if not self.running():
            raise AssertionError(f"operator exited:\n{self.log()[-3000:]}")
        try:
            with urllib.request.urlopen(self.url("/readyz"), timeout=2) as response:
                return bool(response.status == 200)
        except (urllib.error.URLError, OSError):
            return False

    def start_and_wait(self) -> None:
        self.start()
        wait_for(self.ready, timeout=60, description="the operator's /readyz")

    def health(self) -> str:
        """/healthz's text: `ok (leader)`, `ok (standby)`, ... ('' while unreachable)."""
        try:
            with urllib.request.urlopen(self.url("/healthz"), timeout=2) as response:
                text: str = response.read().decode()
                return text
        except (urllib.error.URLError, OSError):
            return ""

    def metrics(self) -> str:
        with urllib.request.urlopen(self.url("/metrics"), timeout=5) as response:
            text: str = response.read().decode()
            return text

    def scrape(self) -> Scrape:
        return Scrape(self.metrics())

    def errors(self) -> float:
        """Unexpected errors so far (all stages): what `running()` cannot show, since
        the operator catches them, logs them and tries again."""
        return self.scrape().total("job_operator_errors_total")


def job_operator_env(kubeconfig: Path) -> dict[str, str]:
    """The environment of a job-operator process that talks to the cluster as `kubeconfig`."""
    return {**os.environ, "KUBECONFIG": str(kubeconfig), "PYTHONUNBUFFERED": "1"}


def delete_lease(kube: Kube) -> None:
    kube.kubectl_run(
        "delete", "leases.coordination.k8s.io", LEASE_NAME, "-n", INSTALL_NAMESPACE,
        "--ignore-not-found",
    )  # fmt: skip


@pytest.fixture
def make_operator(
    kube: Kube,
    namespace: str,
    installed: Installed,
    tmp_path: Path,
) -> Iterator[Callable[..., Operator]]:
    """Builds operator processes for the test's namespace (not started). With leader
    election they share the install's Lease (job-operator-system/job-operator-leader, the
    one its Role grants), as the Deployment's replicas do; it is deleted after the test."""
    made: list[Operator] = []
    elects = False

    def build(*extra: str, leader_elect: bool = False) -> Operator:
        nonlocal elects
        port = free_port()
        argv = [
            sys.executable,
            "-m",
            "job_operator",
            "run",
            "-n",
            namespace,
            "--metrics-port",
            str(port),
            "--metrics-address",
            "127.0.0.1",
            *OPERATOR_TEST_FLAGS,
            *extra,
        ]
        if leader_elect:
            if not elects:
                delete_lease(kube)  # one left by another run would hold for its duration
            elects = True
            argv += [
                "--lease-namespace",
                INSTALL_NAMESPACE,
                "--lease-duration",
                "4",
                "--identity",
                f"{namespace}-replica-{len(made)}",
            ]
        else:
            argv.append("--no-leader-elect")
        op = Operator(
            argv,
            job_operator_env(installed.operator.kubeconfig),
            tmp_path / f"operator-{len(made)}.log",
            metrics_port=port,
        )
        made.append(op)
        return op

    yield build
    for op in made:
        op.stop()
    if elects:
        delete_lease(kube)


@pytest.fixture
def operator(make_operator: Callable[..., Operator]) -> Operator:
    """A running operator for the test's namespace."""
    op = make_operator()
    op.start_and_wait()
    return op


@pytest.fixture
def make_simulator(
    namespace: str,
    installed: Installed,
    tmp_path: Path,
) -> Iterator[Callable[..., Process]]:
    made: list[Process] = []

    def build(*extra: str) -> Process:
        argv = [
            sys.executable,
            "-m",
            "job_operator",
            "simulate",
            "-n",
            namespace,
            "--provision-seconds",
            "0.1",
            "--run-seconds",
            "0.5",
            "--seed",
            "7",
            *extra,
        ]
        sim = Process(
            argv,
            job_operator_env(installed.simulator.kubeconfig),
            tmp_path / f"simulator-{len(made)}.log",
        )
        made.append(sim)
        return sim

    yield build
    for sim in made:
        sim.stop()


@pytest.fixture
def simulator(make_simulator: Callable[..., Process]) -> Process:
    sim = make_simulator()
    sim.start()
    return sim


@dataclass
class Jobs:
    """Jobs in one namespace, driven with kubectl as a user would."""

    kube: Kube
    namespace: str
    applied: dict[str, dict[str, Any]] = field(default_factory=dict)

    def manifest(
        self, name: str, *, annotations: dict[str, str] | None = None, **spec: Any
    ) -> dict[str, Any]:
        return {
            "apiVersion": names.API_VERSION,
            "kind": names.JOB_KIND,
            "metadata": {
                "name": name,
                "namespace": self.namespace,
                "annotations": annotations or {},
            },
            "spec": {"type": "materialize-view", "input": {"dataset_id": 10736}, **spec},
        }

    def apply(self, manifest: dict[str, Any], *extra: str) -> subprocess.CompletedProcess[str]:
        self.applied[manifest["metadata"]["name"]] = manifest
        return self.kube.kubectl_run("apply", "-f", "-", *extra, input=yaml.safe_dump(manifest))

    def create(
        self, name: str, *, annotations: dict[str, str] | None = None, **spec: Any
    ) -> dict[str, Any]:
        manifest = self.manifest(name, annotations=annotations, **spec)
        self.apply(manifest)
        return manifest

    def get(self, name: str) -> dict[str, Any]:
        out = self.kube.kubectl_run("get", "ojob", name, "-n", self.namespace, "-o", "json")
        job: dict[str, Any] = json.loads(out.stdout)
        return job

    def status(self, name: str) -> dict[str, Any]:
        status: dict[str, Any] = self.get(name).get("status") or {}
        return status

    def annotate(self, name: str, annotations: dict[str, str]) -> None:
        pairs = [f"{k}={v}" for k, v in annotations.items()]
        self.kube.kubectl_run("annotate", "--overwrite", "ojob", name, "-n", self.namespace, *pairs)

    def wait(
        self,
        name: str,
        predicate: Callable[[dict[str, Any]], bool],
        description: str,
        timeout: float = 30.0,
    ) -> dict[str, Any]:
        """Poll the job's status until `predicate(status)` holds; return that status."""

        def check() -> dict[str, Any] | None:
            status = self.status(name)
            return status if predicate(status) else None

        result: dict[str, Any] = wait_for(
            check, timeout=timeout, interval=0.2, description=f"{name}: {description}"
        )
        return result

    def wait_state(self, name: str, state: str, timeout: float = 30.0) -> dict[str, Any]:
        return self.wait(name, lambda s: s.get("state") == state, f"state {state}", timeout)

    def wait_running(self, name: str, timeout: float = 30.0) -> dict[str, Any]:
        return self.wait(
            name,
            lambda s: s.get("state") == "running" and bool(s.get("executor")),
            "running on an executor",
            timeout,
        )

    def executors(self) -> list[dict[str, Any]]:
        out = self.kube.kubectl_run("get", "ec", "-n", self.namespace, "-o", "json")
        items: list[dict[str, Any]] = json.loads(out.stdout)["items"]
        return items

    def executor_names(self) -> set[str]:
        return {e["metadata"]["name"] for e in self.executors()}

    def events(self, name: str) -> list[dict[str, Any]]:
        out = self.kube.kubectl_run(
            "get",
            "events",
            "-n",
            self.namespace,
            "-o",
            "json",
            f"--field-selector=involvedObject.name={name}",
        )
        items: list[dict[str, Any]] = json.loads(out.stdout)["items"]
        return items

    def event_reasons(self, name: str) -> list[str]:
        return [e["reason"] for e in self.events(name)]

    def wait_events(
        self, name: str, reason: str, count: int = 1, timeout: float = 30.0
    ) -> list[dict[str, Any]]:
        """Wait until `count` events with `reason` are on the job; return them (exactly
        `count`, or the assertion fails)."""

        def check() -> list[dict[str, Any]] | None:
            found = [e for e in self.events(name) if e["reason"] == reason]
            return found if len(found) >= count else None

        found: list[dict[str, Any]] = wait_for(
            check, timeout=timeout, interval=0.2, description=f"{count} {reason} event(s) on {name}"
        )
        assert len(found) == count, found
        return found


@pytest.fixture
def jobs(kube: Kube, namespace: str, crds: None) -> Jobs:
    return Jobs(kube, namespace)


# Job annotations telling the simulator how an attempt ends.
HANG = {names.SIMULATE_OUTCOME_ANNOTATION: "hang"}
