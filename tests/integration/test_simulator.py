"""The executor simulator against the real API server, with no operator running.

Jobs and ExecutorClusters are made by hand (as the dispatcher would make them); the
simulator, started as its own process (`python -m job_operator.simulator`), must carry
each executor to the outcome its Job asks for, and a restarted simulator must carry on
where the executors are.
"""

from __future__ import annotations

import json
import sys
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from job_operator import names
from tests.helpers import Kube, wait_for
from tests.integration.conftest import Installed, Jobs, Process, job_operator_env

OUTCOME = names.SIMULATE_OUTCOME_ANNOTATION
RUN_SECONDS = names.SIMULATE_RUN_SECONDS_ANNOTATION
TIMEOUT = 30.0
# Long enough that a loaded machine still sees `doomed` Running before deleting it.
DOOMED_RUN_SECONDS = 3.0


@pytest.fixture
def start_simulator(
    namespace: str, installed: Installed, tmp_path: Path
) -> Iterator[Callable[..., Process]]:
    """Starts simulator processes for the test's namespace, as the simulator's identity;
    all are stopped afterwards."""
    made: list[Process] = []
    kubeconfig = installed.simulator.kubeconfig

    def start(*extra: str) -> Process:
        argv = [
            sys.executable, "-m", "job_operator.simulator", "--kubeconfig", str(kubeconfig),
            "-n", namespace, "--provision-seconds", "0.2", "--run-seconds", "0.5", *extra,
        ]  # fmt: skip
        sim = Process(argv, job_operator_env(kubeconfig), tmp_path / f"simulator-{len(made)}.log")
        made.append(sim)
        sim.start()
        return sim

    try:
        yield start
    finally:
        for sim in made:
            sim.stop()


def create_executor(kube: Kube, jobs: Jobs, job_name: str) -> str:
    """An ExecutorCluster for the job's first attempt, as the dispatcher makes one."""
    job = jobs.get(job_name)
    job_uid = job["metadata"]["uid"]
    name = f"{names.EXECUTOR_NAME_PREFIX}{uuid.uuid4()}"
    manifest = {
        "apiVersion": names.API_VERSION,
        "kind": names.EXECUTOR_KIND,
        "metadata": {
            "name": name,
            "namespace": jobs.namespace,
            "labels": {names.JOB_NAME_LABEL: job_name, names.JOB_UID_LABEL: job_uid},
            "ownerReferences": [
                {
                    "apiVersion": names.API_VERSION,
                    "kind": names.JOB_KIND,
                    "name": job_name,
                    "uid": job_uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "jobRef": {"name": job_name, "uid": job_uid},
            "attempt": 1,
            "executorClass": "default",
        },
    }
    kube.kubectl_run("create", "-f", "-", input=json.dumps(manifest))
    return name


def executor_status(kube: Kube, namespace: str, name: str) -> dict[str, Any]:
    out = kube.kubectl_run("get", "ec", name, "-n", namespace, "-o", "json")
    status: dict[str, Any] = json.loads(out.stdout).get("status") or {}
    return status


def wait_phase(kube: Kube, namespace: str, name: str, phase: str) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        status = executor_status(kube, namespace, name)
        return status if status.get("phase") == phase else None

    status = wait_for(check, timeout=TIMEOUT, interval=0.1, description=f"executor {name} {phase}")
    assert status is not None
    return status


def assert_seed_shaped(result: dict[str, Any]) -> None:
    assert result["dataset_id"] == 10736  # the job input's
    assert isinstance(result["snapshot_id"], int)
    assert uuid.UUID(result["recalculation_id"]).version == 4


def assert_clean_log(sim: Process) -> None:
    log = sim.log()
    assert "Traceback" not in log, log
    assert " ERROR " not in log, log


def test_executors_reach_the_outcome_their_job_asks_for(
    kube: Kube, namespace: str, jobs: Jobs, start_simulator: Callable[..., Process]
) -> None:
    sim = start_simulator()
    jobs.create("plain")
    jobs.create("broken", annotations={OUTCOME: "fail"})
    jobs.create("lost", annotations={OUTCOME: "terminate"})
    jobs.create("stuck", annotations={OUTCOME: "hang"})
    jobs.create("doomed", annotations={RUN_SECONDS: str(DOOMED_RUN_SECONDS)})
    ec = {job: create_executor(kube, jobs, job)
          for job in ("plain", "broken", "lost", "stuck", "doomed")}  # fmt: skip

    # An executor deleted while Running: its driver ends quietly. Caught first, while
    # its run (a few seconds, so a slow machine still sees it Running) goes on.
    wait_phase(kube, namespace, ec["doomed"], "Running")
    kube.kubectl_run("delete", "ec", ec["doomed"], "-n", namespace)

    plain = wait_phase(kube, namespace, ec["plain"], "Succeeded")
    assert_seed_shaped(plain["result"])
    assert plain.get("message")

    broken = wait_phase(kube, namespace, ec["broken"], "Failed")
    assert broken.get("message")
    assert "result" not in broken

    lost = wait_phase(kube, namespace, ec["lost"], "Terminated")
    assert lost.get("message")
    assert "result" not in lost

    # A witness, started once `stuck` is Running and `doomed` deleted, runs longer than
    # any default run (0.5 s +-20%) and longer than `doomed` would have run: when it has
    # succeeded, `stuck` would have ended if it were not hanging, and `doomed` would have
    # been written.
    wait_phase(kube, namespace, ec["stuck"], "Running")
    jobs.create("witness", annotations={RUN_SECONDS: str(DOOMED_RUN_SECONDS * 1.5)})
    witness = create_executor(kube, jobs, "witness")
    assert_seed_shaped(wait_phase(kube, namespace, witness, "Succeeded")["result"])

    stuck = executor_status(kube, namespace, ec["stuck"])
    assert stuck["phase"] == "Running"
    assert "result" not in stuck
    found = kube.kubectl_run("get", "ec", ec["doomed"], "-n", namespace, check=False)
    assert found.returncode != 0
    assert "NotFound" in found.stderr

    sim.stop()
    assert sim.proc is not None
    assert sim.proc.returncode == 0  # SIGTERM: a clean stop
    log = sim.log()
    for job, phases in {
        "plain": ("Provisioning", "Running", "Succeeded"),
        "broken": ("Provisioning", "Running", "Failed"),
        "lost": ("Provisioning", "Running", "Terminated"),
        "stuck": ("Provisioning", "Running"),
    }.items():
        for phase in phases:
            assert f"executor {namespace}/{ec[job]} -> {phase}" in log, log
    assert f"executor {namespace}/{ec['stuck']} -> Succeeded" not in log
    assert f"executor {namespace}/{ec['doomed']} -> Succeeded" not in log
    assert_clean_log(sim)


def test_a_restarted_simulator_carries_running_executors_to_their_end(
    kube: Kube, namespace: str, jobs: Jobs, start_simulator: Callable[..., Process]
) -> None:
    first = start_simulator()
    # One would hang until its Job says otherwise; one runs for a while.
    jobs.create("resumed", annotations={OUTCOME: "hang"})
    jobs.create("long", annotations={RUN_SECONDS: "3"})
    resumed = create_executor(kube, jobs, "resumed")
    long = create_executor(kube, jobs, "long")
    wait_phase(kube, namespace, resumed, "Running")
    wait_phase(kube, namespace, long, "Running")

    first.kill()  # SIGKILL: a crash, mid-run
    assert executor_status(kube, namespace, long)["phase"] == "Running"
    jobs.annotate("resumed", {OUTCOME: "succeed"})

    second = start_simulator()
    assert_seed_shaped(wait_phase(kube, namespace, resumed, "Succeeded")["result"])
    assert_seed_shaped(wait_phase(kube, namespace, long, "Succeeded")["result"])

    # The second simulator started from Running: it wrote the end and nothing before it.
    log = second.log()
    for name in (resumed, long):
        assert f"executor {namespace}/{name} -> Succeeded" in log, log
        assert f"executor {namespace}/{name} -> Provisioning" not in log, log
        assert f"executor {namespace}/{name} -> Running" not in log, log
    assert f"executor {namespace}/{resumed} -> Succeeded" not in first.log()
    assert f"executor {namespace}/{long} -> Succeeded" not in first.log()
    assert_clean_log(second)
