"""Orphans: the operator reschedules a job by itself when its ExecutorCluster dies."""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

from job_operator import names
from tests.helpers import Kube, wait_for
from tests.integration.conftest import HANG, Jobs, Operator, Process


def terminate(kube: Kube, jobs: Jobs, executor: str) -> None:
    """Mark an ExecutorCluster Terminated, as a provisioner reporting its loss would."""
    kube.kubectl_run(
        "patch",
        "ec",
        executor,
        "-n",
        jobs.namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status":{"phase":"Terminated"}}',
    )


def lost_and_back(jobs: Jobs, name: str, lost: str) -> dict[str, Any]:
    """Wait until `name` runs again on a cluster other than `lost`; return its status."""
    return jobs.wait(
        name,
        lambda s: s.get("state") == "running" and s.get("executor") not in (None, lost),
        "running on a fresh executor",
    )


def test_deleted_executor_is_replaced(
    kube: Kube,
    jobs: Jobs,
    operator: Operator,
    simulator: Process,
) -> None:
    jobs.create("victim", annotations=HANG)
    lost = jobs.wait_running("victim")["executor"]
    kube.kubectl_run("delete", "ec", lost, "-n", jobs.namespace)
    status = lost_and_back(jobs, "victim", lost)
    assert status["autoReschedules"] == 1
    assert status["attempt"] == 2
    entry = status["history"][-1]
    assert (entry["executor"], entry["reason"], entry["state"]) == (lost, "ExecutorLost", "running")
    assert status.get("reschedule") is None  # automatic: status.reschedule is left alone
    (event,) = jobs.wait_events("victim", "ExecutorLost")
    assert event["type"] == "Warning" and lost in event["message"]


def test_terminated_executor_is_replaced_and_deleted(
    kube: Kube,
    jobs: Jobs,
    operator: Operator,
    simulator: Process,
) -> None:
    jobs.create("terminated", annotations=HANG)
    lost = jobs.wait_running("terminated")["executor"]
    terminate(kube, jobs, lost)
    status = lost_and_back(jobs, "terminated", lost)
    assert status["history"][-1]["reason"] == "ExecutorLost"
    wait_for(lambda: lost not in jobs.executor_names(), description="terminated EC deleted")


def test_too_many_losses_fail_the_job(
    kube: Kube,
    jobs: Jobs,
    operator: Operator,
    simulator: Process,
) -> None:
    jobs.create("fragile", annotations=HANG, maxAutoReschedules=1)
    first = jobs.wait_running("fragile")["executor"]
    kube.kubectl_run("delete", "ec", first, "-n", jobs.namespace)
    second = lost_and_back(jobs, "fragile", first)["executor"]
    kube.kubectl_run("delete", "ec", second, "-n", jobs.namespace)
    status = jobs.wait_state("fragile", "failed")
    assert status["reason"] == "ExecutorLostTooOften"
    assert status["autoReschedules"] == 1
    assert [h["executor"] for h in status["history"]] == [first, second]
    jobs.wait_events("fragile", "ExecutorLostTooOften")


def test_manual_reschedule_resets_the_automatic_budget(
    kube: Kube,
    jobs: Jobs,
    operator: Operator,
    simulator: Process,
) -> None:
    jobs.create("budget", annotations=HANG, maxAutoReschedules=1)
    first = jobs.wait_running("budget")["executor"]
    kube.kubectl_run("delete", "ec", first, "-n", jobs.namespace)
    second = lost_and_back(jobs, "budget", first)
    assert second["autoReschedules"] == 1
    jobs.annotate("budget", {names.RESCHEDULE_ANNOTATION: "manual"})
    third = jobs.wait(
        "budget",
        lambda s: (
            (s.get("reschedule") or {}).get("request") == "manual" and s.get("state") == "running"
        ),
        "manual reschedule, running again",
    )
    assert third["autoReschedules"] == 0
    kube.kubectl_run("delete", "ec", third["executor"], "-n", jobs.namespace)
    fourth = lost_and_back(jobs, "budget", third["executor"])  # not failed: budget was reset
    assert fourth["autoReschedules"] == 1


def test_losses_while_the_operator_was_down_are_repaired(
    kube: Kube,
    jobs: Jobs,
    operator: Operator,
    simulator: Process,
) -> None:
    for name in ("deleted-offline", "terminated-offline"):
        jobs.create(name, annotations=HANG)
    deleted = jobs.wait_running("deleted-offline")["executor"]
    terminated = jobs.wait_running("terminated-offline")["executor"]
    operator.stop()
    simulator.stop()
    kube.kubectl_run("delete", "ec", deleted, "-n", jobs.namespace)
    terminate(kube, jobs, terminated)
    simulator.start()
    operator.start_and_wait()
    lost_and_back(jobs, "deleted-offline", deleted)
    lost_and_back(jobs, "terminated-offline", terminated)


def test_a_phase_from_a_cluster_the_job_left_changes_nothing(
    kube: Kube,
    jobs: Jobs,
    operator: Operator,
    simulator: Process,
) -> None:
    """A stale ExecutorCluster (an earlier attempt) reporting Succeeded is ignored, and
    removed as dangling."""
    jobs.create("moved", annotations=HANG)
    current = jobs.wait_running("moved")
    job = jobs.get("moved")
    stale: dict[str, Any] = {
        "apiVersion": names.API_VERSION,
        "kind": names.EXECUTOR_KIND,
        "metadata": {
            "name": "job-executor-00000000-0000-4000-8000-000000000000",
            "namespace": jobs.namespace,
            "labels": {names.JOB_UID_LABEL: job["metadata"]["uid"]},
        },
        "spec": {
            "jobRef": {"name": "moved", "uid": job["metadata"]["uid"]},
            "attempt": 1,
            "executorClass": "default",
        },
    }
    # With the operator stopped, so the report is there before it can clean up.
    operator.stop()
    kube.kubectl_run("apply", "-f", "-", input=json.dumps(stale))
    kube.kubectl_run(
        "patch",
        "ec",
        stale["metadata"]["name"],
        "-n",
        jobs.namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status":{"phase":"Succeeded","result":{"stale":true}}}',
    )
    operator.start_and_wait()
    wait_for(
        lambda: stale["metadata"]["name"] not in jobs.executor_names(),
        description="the stale cluster deleted as dangling",
    )
    after = jobs.status("moved")
    assert (after["state"], after["executor"], after.get("result")) == (
        "running",
        current["executor"],
        None,
    )


def test_clusters_of_deleted_jobs_are_removed(
    kube: Kube,
    jobs: Jobs,
    operator: Operator,
    simulator: Process,
) -> None:
    jobs.create("short-lived", annotations=HANG)
    executor = jobs.wait_running("short-lived")["executor"]
    kube.kubectl_run("delete", "ojob", "short-lived", "-n", jobs.namespace)
    check: Callable[[], bool] = lambda: executor not in jobs.executor_names()  # noqa: E731
    wait_for(check, description="the deleted job's cluster removed")
