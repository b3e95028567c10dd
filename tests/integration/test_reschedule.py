"""The contract's Reschedule rules, driven through `kubectl annotate` and `kubectl apply`."""

from __future__ import annotations

import json
import subprocess
import uuid
from collections.abc import Callable
from typing import Any

import pytest
import yaml

from job_operator import names
from tests.helpers import Kube, wait_for
from tests.integration.conftest import HANG, Jobs, Operator, Process

RESCHEDULE = names.RESCHEDULE_ANNOTATION
FORCE = names.RESCHEDULE_FORCE_ANNOTATION


def condition(status: dict[str, Any], type_: str) -> dict[str, Any]:
    conditions = status.get("conditions") or []
    assert isinstance(conditions, list)
    found = [c for c in conditions if c["type"] == type_]
    assert found, f"no {type_} condition in {conditions}"
    result: dict[str, Any] = found[0]
    return result


def handled(token: str) -> Callable[[dict[str, Any]], bool]:
    def check(status: dict[str, Any]) -> bool:
        return bool((status.get("reschedule") or {}).get("request") == token)

    return check


def test_new_job_runs_on_a_fresh_owned_executor(
    jobs: Jobs,
    operator: Operator,
    simulator: Process,
) -> None:
    jobs.create("nightly", annotations=HANG)
    status = jobs.wait_running("nightly")
    assert status["attempt"] == 1
    executor = status["executor"]
    assert executor.startswith("job-executor-")
    assert uuid.UUID(executor.removeprefix("job-executor-")).version == 4
    assert condition(status, "Dispatched")["status"] == "True"
    job = jobs.get("nightly")
    (ec,) = jobs.executors()
    assert ec["metadata"]["name"] == executor
    owner = ec["metadata"]["ownerReferences"][0]
    assert owner["uid"] == job["metadata"]["uid"] and owner["controller"] is True
    assert ec["metadata"]["labels"][names.JOB_UID_LABEL] == job["metadata"]["uid"]
    assert ec["metadata"]["labels"][names.JOB_NAME_LABEL] == "nightly"
    assert ec["spec"] == {
        "jobRef": {"name": "nightly", "uid": job["metadata"]["uid"]},
        "attempt": 1,
        "executorClass": "default",
    }


def test_job_follows_its_executor_to_completion(
    jobs: Jobs,
    operator: Operator,
    simulator: Process,
) -> None:
    jobs.create("done")
    status = jobs.wait_state("done", "completed")
    assert status["result"]["dataset_id"]
    assert status["endedAt"] and status["startedAt"]


def test_reschedule_running_job_moves_it_to_a_fresh_executor(
    jobs: Jobs,
    operator: Operator,
    simulator: Process,
) -> None:
    jobs.create("stuck", annotations=HANG)
    first = jobs.wait_running("stuck")["executor"]
    jobs.annotate("stuck", {RESCHEDULE: "1700000000"})
    status = jobs.wait("stuck", handled("1700000000"), "reschedule handled")
    record = status["reschedule"]
    assert record["outcome"] == "rescheduled"
    assert record["force"] is False
    assert record["previousState"] == "running"
    assert record["previousExecutor"] == first
    assert record["requestedBy"] == "kubectl-annotate"
    entry = status["history"][-1]
    assert (entry["attempt"], entry["executor"], entry["state"], entry["reason"]) == (
        1,
        first,
        "running",
        "Rescheduled",
    )
    assert condition(status, "Rescheduled")["reason"] == "ManualRequest"
    status = jobs.wait(
        "stuck",
        lambda s: s.get("state") == "running" and s.get("executor") not in (None, first),
        "running on a new executor",
    )
    assert status["attempt"] == 2
    wait_for(lambda: first not in jobs.executor_names(), description="old executor deleted")
    jobs.wait_events("stuck", "Rescheduled")
    # The annotation is the user's: never removed or rewritten.
    assert jobs.get("stuck")["metadata"]["annotations"][RESCHEDULE] == "1700000000"


def test_a_request_made_while_the_operator_was_down_is_handled_at_start_up(
    jobs: Jobs,
    operator: Operator,
    simulator: Process,
) -> None:
    """The start-up's own list of jobs queues it (before kopf watches), and keeps who
    wrote the annotation: kopf's event of the same version is then not parsed again."""
    jobs.create("offline", annotations=HANG)
    first = jobs.wait_running("offline")["executor"]
    operator.stop()
    jobs.annotate("offline", {RESCHEDULE: "while-down"})
    operator.start_and_wait()
    status = jobs.wait(
        "offline",
        lambda s: handled("while-down")(s) and s.get("executor") not in (None, first),
        "handled after the restart",
    )
    record = status["reschedule"]
    assert (record["outcome"], record["previousExecutor"]) == ("rescheduled", first)
    assert record["requestedBy"] == "kubectl-annotate"
    jobs.wait_events("offline", "Rescheduled")


def test_every_reschedule_gets_a_cluster_never_used_before(
    jobs: Jobs,
    operator: Operator,
    simulator: Process,
) -> None:
    jobs.create("hopper", annotations=HANG)
    seen = [jobs.wait_running("hopper")["executor"]]
    for round_ in range(3):
        token = f"hop-{round_}"
        jobs.annotate("hopper", {RESCHEDULE: token})
        done = handled(token)
        status = jobs.wait(
            "hopper",
            lambda s, done=done: (
                done(s)  # type: ignore[misc]
                and s.get("state") == "running"
            ),
            f"{token} handled and running",
        )
        assert status["executor"] not in seen
        seen.append(status["executor"])
        wait_for(
            lambda: jobs.executor_names() == {seen[-1]},
            description="only the current executor left",
        )
    assert [h["executor"] for h in jobs.status("hopper")["history"]] == seen[:-1]


def test_terminal_job_is_skipped_and_untouched(
    jobs: Jobs,
    operator: Operator,
    simulator: Process,
) -> None:
    jobs.create("finished")
    before = jobs.wait_state("finished", "completed")
    jobs.annotate("finished", {RESCHEDULE: "t1"})
    after = jobs.wait("finished", handled("t1"), "skip recorded")
    assert after["reschedule"]["outcome"] == "skipped_terminal"
    assert after["reschedule"]["previousState"] == "completed"
    for key in (
        "state",
        "executor",
        "attempt",
        "result",
        "endedAt",
        "startedAt",
        "history",
        "updatedAt",
    ):
        assert after.get(key) == before.get(key), key
    assert condition(after, "Rescheduled")["reason"] == "SkippedTerminal"
    jobs.wait_events("finished", "RescheduleSkipped")
    assert after["executor"] in jobs.executor_names()


def test_forced_reschedule_reruns_a_terminal_job(
    jobs: Jobs,
    operator: Operator,
    simulator: Process,
) -> None:
    jobs.create("rerun")
    done = jobs.wait_state("rerun", "completed")
    jobs.annotate("rerun", {RESCHEDULE: "f1", FORCE: "f1"})
    status = jobs.wait("rerun", handled("f1"), "forced reschedule handled")
    assert status["reschedule"]["outcome"] == "rescheduled"
    assert status["reschedule"]["force"] is True
    assert condition(status, "Rescheduled")["reason"] == "Forced"
    entry = status["history"][-1]
    assert entry["state"] == "completed"
    assert entry["result"] == done["result"] and entry["endedAt"] == done["endedAt"]
    again = jobs.wait(
        "rerun",
        lambda s: s.get("state") == "completed" and s.get("executor") != done["executor"],
        "completed again, elsewhere",
    )
    assert again["attempt"] == 2


def test_stale_force_annotation_does_not_force(
    jobs: Jobs,
    operator: Operator,
    simulator: Process,
) -> None:
    jobs.create("stale")
    jobs.wait_state("stale", "completed")
    jobs.annotate("stale", {RESCHEDULE: "a", FORCE: "a"})
    jobs.wait(
        "stale",
        lambda s: handled("a")(s) and s.get("state") == "completed",
        "forced rerun completed",
    )
    jobs.annotate("stale", {RESCHEDULE: "b"})  # the force annotation still says "a"
    status = jobs.wait("stale", handled("b"), "b handled")
    assert status["reschedule"]["outcome"] == "skipped_terminal"
    assert status["reschedule"]["force"] is False


def test_same_token_is_handled_once(
    jobs: Jobs,
    operator: Operator,
    simulator: Process,
) -> None:
    jobs.create("once", annotations=HANG)
    jobs.wait_running("once")
    jobs.annotate("once", {RESCHEDULE: "same"})
    jobs.wait(
        "once",
        lambda s: handled("same")(s) and s.get("state") == "running",
        "handled and running again",
    )
    jobs.annotate("once", {RESCHEDULE: "same", "unrelated": "touch"})  # same token again
    # A later token is a barrier: the operator handles one job's changes in order.
    jobs.annotate("once", {RESCHEDULE: "next"})
    status = jobs.wait("once", handled("next"), "next handled")
    reasons = [h["reason"] for h in status["history"]]
    assert reasons == ["Rescheduled", "Rescheduled"]
    jobs.wait_events("once", "Rescheduled", count=2)


def test_gitops_apply_twice_handles_once_and_shows_no_drift(
    kube: Kube,
    jobs: Jobs,
    operator: Operator,
    simulator: Process,
    tmp_path: object,
) -> None:
    jobs.create("gitops", annotations=HANG)
    jobs.wait_running("gitops")
    manifest = jobs.manifest("gitops", annotations={**HANG, RESCHEDULE: "2024-06-01T00:00:00Z"})
    jobs.apply(manifest)
    jobs.wait(
        "gitops",
        lambda s: handled("2024-06-01T00:00:00Z")(s) and s.get("state") == "running",
        "handled and running",
    )
    jobs.apply(manifest)  # the same commit, synced again
    manifest2 = jobs.manifest("gitops", annotations={**HANG, RESCHEDULE: "2024-06-02T00:00:00Z"})
    jobs.apply(manifest2)
    status = jobs.wait(
        "gitops",
        lambda s: handled("2024-06-02T00:00:00Z")(s) and s.get("state") == "running",
        "second request handled",
    )
    assert [h["reason"] for h in status["history"]] == ["Rescheduled", "Rescheduled"]
    diff = kube.kubectl_run("diff", "-f", "-", input=yaml.safe_dump(manifest2), check=False)
    assert diff.returncode == 0, diff.stdout + diff.stderr
    server_side = kube.kubectl_run(
        "diff", "--server-side", "-f", "-", input=yaml.safe_dump(manifest2), check=False
    )
    assert server_side.returncode == 0, server_side.stdout + server_side.stderr


def test_over_long_token_is_refused_without_changing_state(
    jobs: Jobs,
    operator: Operator,
    simulator: Process,
) -> None:
    jobs.create("bad", annotations=HANG)
    before = jobs.wait_running("bad")
    jobs.annotate("bad", {RESCHEDULE: "x" * 300})
    status = jobs.wait("bad", lambda s: bool(s.get("rejectedRequests")), "refusal recorded")
    valid = condition(status, "RescheduleRequestValid")
    assert (valid["status"], valid["reason"]) == ("False", "TokenTooLong")
    assert (status["state"], status["executor"], status["attempt"]) == (
        before["state"],
        before["executor"],
        before["attempt"],
    )
    assert status.get("reschedule") is None
    (warning,) = jobs.wait_events("bad", "InvalidRescheduleRequest")
    assert warning["type"] == "Warning" and "256" in warning["message"]
    assert operator.running()
    jobs.annotate("bad", {RESCHEDULE: "ok"})
    status = jobs.wait("bad", handled("ok"), "a valid token after a bad one")
    assert condition(status, "RescheduleRequestValid")["status"] == "True"
    jobs.wait_events("bad", "Rescheduled")
    assert jobs.event_reasons("bad").count("InvalidRescheduleRequest") == 1


def test_cancel_running_job_then_cancel_is_skipped(
    jobs: Jobs,
    operator: Operator,
    simulator: Process,
) -> None:
    jobs.create("cancel-me", annotations=HANG)
    executor = jobs.wait_running("cancel-me")["executor"]
    jobs.annotate("cancel-me", {names.CANCEL_ANNOTATION: "c1"})
    status = jobs.wait_state("cancel-me", "cancelled")
    assert status["cancel"]["request"] == "c1"
    assert status.get("executor") is None
    wait_for(lambda: executor not in jobs.executor_names(), description="executor deleted")
    jobs.annotate("cancel-me", {names.CANCEL_ANNOTATION: "c2"})
    status = jobs.wait("cancel-me", lambda s: s["cancel"]["request"] == "c2", "c2 handled")
    assert status["cancel"]["outcome"] == "skipped_terminal"
    assert status["state"] == "cancelled"


def test_unforced_reschedule_racing_completion_never_resets_a_terminal_job(
    kube: Kube,
    jobs: Jobs,
    operator: Operator,
) -> None:
    """The test plays the provisioner: it completes each executor at the moment it asks
    for an unforced reschedule, many times; a job that ended terminal stays terminal."""
    trials = 24
    for i in range(trials):
        jobs.create(f"race-{i}")
    executors = {}
    for i in range(trials):
        status = jobs.wait(f"race-{i}", lambda s: bool(s.get("executor")), "dispatched")
        executors[i] = status["executor"]
    completions, requests = [], []
    for i in range(trials):
        patch = json.dumps({"status": {"phase": "Succeeded", "result": {"trial": i}}})
        completions.append(
            subprocess.Popen(
                kube.kubectl_argv(
                    "patch",
                    "ec",
                    executors[i],
                    "-n",
                    jobs.namespace,
                    "--subresource=status",
                    "--type=merge",
                    "-p",
                    patch,
                ),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
                text=True,
            )
        )
        requests.append(
            subprocess.Popen(
                kube.kubectl_argv(
                    "annotate",
                    "--overwrite",
                    "ojob",
                    f"race-{i}",
                    "-n",
                    jobs.namespace,
                    f"{RESCHEDULE}=race",
                ),
                stdout=subprocess.DEVNULL,
                stderr=subprocess.PIPE,
            )
        )
    for request in requests:
        assert request.wait(60) == 0
    completed = []
    for proc in completions:
        _, stderr = proc.communicate(timeout=60)
        # The request may win: the operator deletes the old cluster before the completion.
        assert proc.returncode == 0 or "NotFound" in stderr, stderr
        completed.append(proc.returncode == 0)
    outcomes = {"rescheduled": 0, "skipped_terminal": 0}
    for i in range(trials):
        status = jobs.wait(f"race-{i}", handled("race"), "race request handled")
        outcome = status["reschedule"]["outcome"]
        outcomes[outcome] += 1
        if outcome == "skipped_terminal":
            assert completed[i]
            assert status["reschedule"]["previousState"] == "completed"
            assert status["state"] == "completed"
            assert status["result"] == {"trial": i}
        else:
            assert status["reschedule"]["previousState"] in ("pending", "running")
        for entry in status.get("history", []):
            assert entry["state"] not in ("completed", "failed", "cancelled"), entry
    assert sum(outcomes.values()) == trials


@pytest.mark.parametrize(
    ("spec", "message"),
    [
        ({"type": "x", "maxAutoReschedules": "three"}, "maxAutoReschedules"),
        ({"type": "x", "maxAutoReschedules": -1}, "maxAutoReschedules"),
        ({"type": "x", "colour": "blue"}, "colour"),
        ({"input": {}}, "type"),
        ({"type": "x", "requestSource": {"type": "api_user", "companyId": [1]}}, "companyId"),
    ],
)
def test_invalid_manifests_are_refused_by_the_server(
    kube: Kube,
    jobs: Jobs,
    spec: dict[str, object],
    message: str,
) -> None:
    manifest = {
        "apiVersion": names.API_VERSION,
        "kind": names.JOB_KIND,
        "metadata": {"name": "invalid", "namespace": jobs.namespace},
        "spec": spec,
    }
    result = kube.kubectl_run("apply", "-f", "-", input=yaml.safe_dump(manifest), check=False)
    assert result.returncode != 0
    assert message in result.stderr
    assert (
        kube.kubectl_run("get", "ojob", "invalid", "-n", jobs.namespace, check=False).returncode
        != 0
    )


def test_bad_state_and_immutable_fields_are_refused(kube: Kube, jobs: Jobs) -> None:
    jobs.create("fixed")
    bad_state = kube.kubectl_run(
        "patch",
        "ojob",
        "fixed",
        "-n",
        jobs.namespace,
        "--subresource=status",
        "--type=merge",
        "-p",
        '{"status":{"state":"exploded"}}',
        check=False,
    )
    assert bad_state.returncode != 0 and "exploded" in bad_state.stderr
    changed = jobs.manifest("fixed")
    changed["spec"]["type"] = "something-else"
    refused = kube.kubectl_run("apply", "-f", "-", input=yaml.safe_dump(changed), check=False)
    assert refused.returncode != 0 and "spec.type is immutable" in refused.stderr
    changed = jobs.manifest("fixed")
    changed["spec"]["input"] = {"dataset_id": 1}
    refused = kube.kubectl_run("apply", "-f", "-", input=yaml.safe_dump(changed), check=False)
    assert refused.returncode != 0 and "spec.input is immutable" in refused.stderr
