"""The `job-operator` command line against a running operator, as on-call would use it."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import yaml

from job_operator import names
from tests.helpers import Kube, run_plugin
from tests.integration.conftest import HANG, Jobs, Operator, Process, job_operator_env

SEED_KEYS = {
    "job_id",
    "state",
    "type",
    "input",
    "executor",
    "data_plane_id",
    "request_source",
    "idempotency_key",
    "result",
    "created_at",
    "updated_at",
    "ended_at",
}


def cli(
    kube: Kube, *args: str, env: dict[str, str] | None = None, timeout: float = 120
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "job_operator", *args],
        env=env or job_operator_env(kube.kubeconfig),
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def result_of(proc: subprocess.CompletedProcess[str]) -> dict[str, Any]:
    assert proc.returncode == 0, proc.stderr
    parsed: dict[str, Any] = json.loads(proc.stdout)
    return parsed


def test_reschedule_prints_the_seed_shaped_result(
    kube: Kube,
    jobs: Jobs,
    operator: Operator,
    simulator: Process,
) -> None:
    jobs.create(
        "nightly",
        annotations=HANG,
        dataPlaneId="dp-1",
        idempotencyKey="k-1",
        requestSource={"type": "api_user", "companyId": 1, "userId": 407},
    )
    before = jobs.wait_running("nightly")
    result = result_of(cli(kube, "reschedule", "nightly", "-n", jobs.namespace, "-o", "json"))
    assert set(result) == SEED_KEYS | {"outcome"}
    assert result["outcome"] == "rescheduled"
    assert result["job_id"] == jobs.get("nightly")["metadata"]["uid"]
    assert result["state"] == "pending"
    assert result["executor"] != before["executor"]
    assert result["request_source"] == {"type": "api_user", "company_id": 1, "user_id": 407}
    assert (result["data_plane_id"], result["idempotency_key"]) == ("dp-1", "k-1")
    assert result["input"] == {"dataset_id": 10736}
    status = jobs.status("nightly")
    assert status["reschedule"]["requestedBy"] == "job-operator-cli"
    token = jobs.get("nightly")["metadata"]["annotations"][names.RESCHEDULE_ANNOTATION]
    assert status["reschedule"]["request"] == token


def test_terminal_job_skipped_then_forced(
    kube: Kube,
    jobs: Jobs,
    operator: Operator,
    simulator: Process,
) -> None:
    jobs.create("done")
    done = jobs.wait_state("done", "completed")
    skipped = result_of(cli(kube, "reschedule", "done", "-n", jobs.namespace, "-o", "json"))
    assert skipped["outcome"] == "skipped_terminal"
    assert skipped["state"] == "completed"
    assert skipped["result"] == done["result"]
    assert skipped["executor"] == done["executor"]
    forced = cli(kube, "reschedule", "done", "-n", jobs.namespace, "--force", "-o", "yaml")
    assert forced.returncode == 0, forced.stderr
    parsed = yaml.safe_load(forced.stdout)
    assert parsed["outcome"] == "rescheduled"
    assert parsed["state"] == "pending" and parsed["result"] is None
    text = cli(kube, "reschedule", "done", "-n", jobs.namespace)
    assert text.returncode == 0
    assert text.stdout.splitlines()[0].split() in (
        ["outcome", "rescheduled"],
        ["outcome", "skipped_terminal"],
    )


def test_missing_job_fails_with_one_line(kube: Kube, jobs: Jobs, operator: Operator) -> None:
    proc = cli(kube, "reschedule", "ghost", "-n", jobs.namespace)
    assert proc.returncode == 1
    assert proc.stderr.strip().splitlines() == [
        f"job-operator: job {jobs.namespace}/ghost not found"
    ]


def test_timeout_when_no_operator_handles_the_request(kube: Kube, jobs: Jobs) -> None:
    jobs.create("orphaned")  # no operator runs in this test's namespace
    proc = cli(kube, "reschedule", "orphaned", "-n", jobs.namespace, "--timeout", "2")
    assert proc.returncode == 4
    (line,) = proc.stderr.strip().splitlines()
    assert line.startswith("job-operator: timed out after 2s")


def test_refused_request_exits_non_zero(
    kube: Kube,
    jobs: Jobs,
    operator: Operator,
    simulator: Process,
) -> None:
    """The CLI's own tokens are always valid; a refused one comes from elsewhere. This
    checks the --no-wait path and `get` after an over-long token was refused."""
    jobs.create("refuse", annotations=HANG)
    jobs.wait_running("refuse")
    nowait = result_of(
        cli(kube, "reschedule", "refuse", "-n", jobs.namespace, "--no-wait", "-o", "json")
    )
    assert nowait["annotation"] == names.RESCHEDULE_ANNOTATION and nowait["request"]
    jobs.wait(
        "refuse",
        lambda s: (s.get("reschedule") or {}).get("request") == nowait["request"],
        "the --no-wait request handled",
    )
    got = result_of(cli(kube, "get", "refuse", "-n", jobs.namespace, "-o", "json"))
    assert set(got) == SEED_KEYS


def test_cancel_command(kube: Kube, jobs: Jobs, operator: Operator, simulator: Process) -> None:
    jobs.create("stop-me", annotations=HANG)
    jobs.wait_running("stop-me")
    result = result_of(cli(kube, "cancel", "stop-me", "-n", jobs.namespace, "-o", "json"))
    assert (result["outcome"], result["state"], result["executor"]) == (
        "cancelled",
        "cancelled",
        None,
    )
    again = result_of(cli(kube, "cancel", "stop-me", "-n", jobs.namespace, "-o", "json"))
    assert again["outcome"] == "skipped_terminal"


def test_kubectl_plugin(kube: Kube, jobs: Jobs, operator: Operator, simulator: Process) -> None:
    jobs.create("plugged")
    jobs.wait_state("plugged", "completed")
    env = job_operator_env(kube.kubeconfig)
    proc = run_plugin(kube, env, "plugged", "-n", jobs.namespace, "--force", "-o", "json")
    assert proc.returncode == 0, proc.stderr
    assert json.loads(proc.stdout)["outcome"] == "rescheduled"
