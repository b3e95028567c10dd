"""A user who edits a Job's status times (`kubectl edit --subresource=status`).

The API server stores any RFC 3339 time there, year 0 included. One the operator can hold
(an offset, to the second) is read and rewritten in its own form; one it cannot (year 0)
makes the job unreadable: counted in errors_total{stage="parse"} and left alone, by the
watch, the start-up lists and the sweep's reads, never a crash nor a retried reconcile
error, its cluster kept; once the time is fixed, the request written meanwhile is handled.
"""

from __future__ import annotations

import json
import subprocess
import sys
from collections.abc import Callable
from typing import Any

from job_operator import cli, names
from job_operator.models import parse_time
from tests.helpers import wait_for
from tests.integration.conftest import SWEEP_INTERVAL, Jobs, Operator, job_operator_env

ERRORS = "job_operator_errors_total"
YEAR_ZERO = "0000-01-01T00:00:00Z"


def patch_status(jobs: Jobs, name: str, status: dict[str, Any]) -> None:
    jobs.kube.kubectl_run(
        "patch", "ojob", name, "-n", jobs.namespace, "--subresource=status",
        "--type=merge", "-p", json.dumps({"status": status}),
    )  # fmt: skip


def wait_parse_errors(operator: Operator, count: int) -> None:
    wait_for(
        lambda: operator.scrape().value(ERRORS, stage="parse") >= count,
        timeout=30,
        interval=0.2,
        description=f"{count} parse errors counted",
    )


def handled(token: str) -> Callable[[dict[str, Any]], bool]:
    return lambda status: (status.get("reschedule") or {}).get("request") == token


def test_an_edited_time_is_read_or_counted_never_a_crash(
    jobs: Jobs, make_operator: Callable[..., Operator]
) -> None:
    operator = make_operator()
    operator.start_and_wait()
    for name in ("offset", "year-zero"):
        jobs.create(name)
        jobs.wait(name, lambda s: bool(s.get("executor")), "dispatched")

    patch_status(jobs, "offset", {"updatedAt": "2025-03-14T13:00:00+01:00"})
    patch_status(jobs, "year-zero", {"startedAt": YEAR_ZERO})
    assert jobs.status("year-zero")["startedAt"] == YEAR_ZERO  # the server kept it
    wait_parse_errors(operator, 1)

    # Requests on both: the unreadable job's first, so once the other is handled the
    # operator has seen (and counted) it too.
    jobs.annotate("year-zero", {names.RESCHEDULE_ANNOTATION: "r1"})
    jobs.annotate("offset", {names.RESCHEDULE_ANNOTATION: "r1"})
    status = jobs.wait("offset", handled("r1"), "the request handled")
    assert status["updatedAt"].endswith("Z") and len(status["updatedAt"]) == 27
    assert parse_time(status["updatedAt"]) > parse_time("2025-03-14T12:00:00Z")
    wait_parse_errors(operator, 2)
    assert "reschedule" not in jobs.status("year-zero")
    line = f"ignoring {jobs.namespace}/year-zero: cannot read the Job: status.startedAt"
    assert line in operator.log()  # one line, naming the job and the field
    shown = subprocess.run(
        [sys.executable, "-m", "job_operator", "get", "year-zero", "-n", jobs.namespace],
        env=job_operator_env(jobs.kube.kubeconfig),
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert (shown.returncode, shown.stdout) == (cli.EXIT_UNREADABLE, ""), shown.stderr
    assert shown.stderr.splitlines() == [
        "job-operator: cannot read the Job: status.startedAt: Value error, not an RFC 3339 "
        f"time: '{YEAR_ZERO}'"
    ]

    # A fresh operator lists the namespace's jobs at start-up (the list that also posts
    # the events a crash kept back): it starts, counts the job it cannot read and
    # handles the rest.
    operator.stop()
    restarted = make_operator()
    restarted.start_and_wait()
    wait_parse_errors(restarted, 1)
    jobs.annotate("offset", {names.RESCHEDULE_ANNOTATION: "r2"})
    jobs.wait("offset", handled("r2"), "a request after the restart handled")
    # Its cluster names a job the restarted operator does not hold: each sweep reads it,
    # counts it and leaves it alone (its cluster kept), never a reconcile error retried.
    left_alone = f"leaving job {jobs.namespace}/year-zero alone"
    wait_for(
        lambda: restarted.log().count(left_alone) >= 2,
        timeout=10 * SWEEP_INTERVAL,
        interval=0.2,
        description="two sweeps reading the unreadable job",
    )
    assert restarted.scrape().value(ERRORS, stage="reconcile") == 0
    executor = jobs.status("year-zero")["executor"]
    assert executor in jobs.executor_names()

    # Fixed by the user: the request written meanwhile is handled, nothing lost.
    patch_status(jobs, "year-zero", {"startedAt": None})
    jobs.wait("year-zero", handled("r1"), "the request handled once the time is fixed")
    assert restarted.running()
    scrape = restarted.scrape()
    assert scrape.total(ERRORS) == scrape.value(ERRORS, stage="parse")
