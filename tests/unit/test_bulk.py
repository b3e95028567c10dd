"""The pure parts of bulk reschedule: selection, usage, prediction, summary, exit status."""

from __future__ import annotations

from typing import Any

import pytest

from job_operator import bulk, core, names
from job_operator.cli import EXIT_DENIED, EXIT_REFUSED, EXIT_TIMEOUT, parser
from job_operator.models import ExecutorCluster, Job, RejectedRequest, RescheduleRecord
from tests.unit.factories import NOW, make_executor, make_job

TOKEN = "morning-after"
RUNNING: dict[str, Any] = {
    "state": "running",
    "executor": "job-executor-1",
    "attempt": 1,
    "updated_at": NOW,
}


def record(
    outcome: str = "rescheduled", previous: str = "running", **extra: Any
) -> RescheduleRecord:
    return RescheduleRecord(
        request=TOKEN,
        outcome=outcome,
        force=extra.pop("force", False),
        handled_at=NOW,
        previous_state=previous,
        **extra,
    )


# --- selection --------------------------------------------------------------------------


def test_states_repeatable_and_comma_separated() -> None:
    assert bulk.parse_states(["failed", "pending,running", " completed "]) == {
        "failed",
        "pending",
        "running",
        "completed",
    }
    assert bulk.parse_states([]) == frozenset()
    with pytest.raises(ValueError, match="unknown state stuck: the states are pending"):
        bulk.parse_states(["failed,stuck"])


def test_state_flag_validated_by_the_parser(capsys: pytest.CaptureFixture[str]) -> None:
    args = parser().parse_args(["reschedule", "--state", "failed", "--state", "pending,running"])
    assert frozenset().union(*args.state) == {"failed", "pending", "running"}
    with pytest.raises(SystemExit) as exit_info:
        parser().parse_args(["reschedule", "--state", "stuck"])
    assert exit_info.value.code == 2
    assert "unknown state stuck" in capsys.readouterr().err


def test_selection_matches_state_and_type() -> None:
    failed = make_job(state="failed", type_="compact-table")
    running = make_job(**RUNNING)
    by_state = bulk.Selection("ns", states=frozenset({"failed"}))
    assert by_state.matches(failed) and not by_state.matches(running)
    by_type = bulk.Selection("ns", job_type="compact-table")
    assert by_type.matches(failed) and not by_type.matches(running)
    assert bulk.Selection("ns").empty and not by_type.empty
    assert not bulk.Selection("ns", label_selector="team=red").empty


def usage(**given: Any) -> str | None:
    arguments: dict[str, Any] = {
        "name": None,
        "selection": bulk.Selection("ns"),
        "all_namespaces": False,
        "select_all": False,
        "bulk_only": [],
        "output": "text",
        "token": None,
        **given,
    }
    return bulk.usage_problem(**arguments)


def test_usage_problems() -> None:
    red = bulk.Selection("ns", label_selector="team=red")
    assert usage(name="nightly") is None
    assert usage(selection=red) is None
    assert usage(select_all=True) is None
    assert "no jobs selected" in (usage() or "")
    assert "every namespace" in (usage(all_namespaces=True) or "")
    assert "not both" in (usage(name="nightly", selection=red) or "")
    assert "not both" in (usage(name="nightly", select_all=True) or "")
    assert "not both" in (usage(name="nightly", all_namespaces=True) or "")
    assert "--dry-run" in (usage(name="nightly", bulk_only=["--dry-run"]) or "")
    assert "-o json" in (usage(selection=red, output="yaml") or "")
    assert usage(name="nightly", output="yaml") is None
    assert "256" in (usage(selection=red, token="x" * 257) or "")
    assert "empty" in (usage(selection=red, token=" ") or "")


# --- prediction: the operator's own decision -------------------------------------------


def running_job(**fields: Any) -> tuple[Job, list[ExecutorCluster]]:
    """A running job, and its cluster as the operator would see it."""
    job = make_job(**{**RUNNING, **fields})
    return job, [make_executor("job-executor-1", job=job, phase="Running")]


def test_predict_follows_the_operators_rules() -> None:
    running = bulk.predict(*running_job(), TOKEN, False, NOW)
    assert (running.outcome, running.already_handled) == ("rescheduled", False)
    assert running.why == "rescheduled from running on job-executor-1"
    done = make_job(state="completed", executor="job-executor-1", attempt=1, updated_at=NOW)
    succeeded = [make_executor("job-executor-1", job=done, phase="Succeeded")]
    skipped = bulk.predict(done, succeeded, TOKEN, False, NOW)
    assert skipped.outcome == "skipped_terminal"
    assert skipped.why.startswith("job is completed")
    forced = bulk.predict(done, succeeded, TOKEN, True, NOW)
    assert forced.outcome == "rescheduled" and "(forced)" in forced.why


def test_predict_sees_what_the_operator_does_first() -> None:
    """What the operator handles before the request decides its outcome: a pending
    cancel, a lost cluster past the job's budget. A copy of the rules that looked at the
    state alone would say `rescheduled` for both of these running jobs."""
    job, clusters = running_job(annotations={names.CANCEL_ANNOTATION: "stop"})
    cancelled = bulk.predict(job, clusters, TOKEN, False, NOW)
    assert cancelled.outcome == "skipped_terminal"
    assert cancelled.why.startswith("cancelled") and "then job is cancelled" in cancelled.why
    job, _ = running_job(max_auto_reschedules=0)
    lost = bulk.predict(job, [], TOKEN, False, NOW)
    assert lost.outcome == "skipped_terminal"
    assert "job-executor-1 was deleted" in lost.why and "then job is failed" in lost.why


def test_predict_reports_a_token_already_handled() -> None:
    job, clusters = running_job(reschedule=record(previous="failed", force=True))
    prediction = bulk.predict(job, clusters, TOKEN, True, NOW)
    assert prediction == bulk.Prediction(
        "rescheduled", "already handled with this token (was failed; forced)", True
    )


def test_predict_writes_nothing_to_the_job() -> None:
    job, clusters = running_job()
    before = job.model_copy(deep=True)
    bulk.predict(job, clusters, TOKEN, True, NOW)
    assert job == before


def test_recorded_outcome_and_carries() -> None:
    plain = make_job(**RUNNING)
    assert bulk.recorded_outcome(plain.status, TOKEN) is None and not bulk.carries(plain, TOKEN)
    annotated = make_job(annotations={names.RESCHEDULE_ANNOTATION: TOKEN}, **RUNNING)
    assert bulk.carries(annotated, TOKEN) and not bulk.carries(annotated, "other")
    handled = make_job(**{**RUNNING, "reschedule": record("skipped_terminal", "completed")})
    assert bulk.carries(handled, TOKEN)
    assert bulk.recorded_outcome(handled.status, TOKEN) == bulk.Recorded(
        "skipped_terminal", "was completed", "completed", False
    )
    refused = RejectedRequest(
        annotation=names.RESCHEDULE_ANNOTATION,
        token_digest=core.token_digest(TOKEN),
        reason="TokenTooLong",
        message="too long",
        rejected_at=NOW,
    )
    rejected = make_job(rejected_requests=[refused], **RUNNING)
    assert bulk.recorded_outcome(rejected.status, TOKEN) == bulk.Recorded("refused", "too long")


def test_request_annotations() -> None:
    assert bulk.request_annotations(TOKEN, False) == {names.RESCHEDULE_ANNOTATION: TOKEN}
    assert bulk.request_annotations(TOKEN, True) == {
        names.RESCHEDULE_ANNOTATION: TOKEN,
        names.RESCHEDULE_FORCE_ANNOTATION: TOKEN,
    }


# --- the summary and the exit status ---------------------------------------------------


def target(name: str, outcome: str | None, **fields: Any) -> bulk.Target:
    return bulk.Target(make_job(name=name, uid=name, **RUNNING), outcome=outcome, **fields)


def test_summary_counts_and_names() -> None:
    targets = [
        target("a", "rescheduled", previous_state="completed", forced=True),
        target("b", "rescheduled", previous_state="running", forced=True),
        target("c", "skipped_terminal", previous_state="failed", already_handled=True),
        target("d", None),
        target("e", "deleted", detail="the job was deleted"),
    ]
    summary = bulk.summarize(TOKEN, targets, max_in_flight=3)
    assert summary.selected == 5
    assert summary.outcomes == {"rescheduled": 2, "skipped_terminal": 1, "deleted": 1}
    assert summary.already_handled == 1
    assert summary.forced == ("default/a (completed)",)
    assert summary.not_handled == ("default/d",)
    assert summary.failures == ("default/e: deleted: the job was deleted",)
    text = bulk.summary_text(summary)
    assert text.splitlines()[0] == (
        "5 jobs: 2 rescheduled, 1 skipped_terminal, 1 deleted (1 by an earlier run)"
    )
    assert "forced, so run again: default/a (completed)" in text
    assert "not handled in time: 1: default/d" in text
    assert f"--token {TOKEN}" in text
    assert summary.to_json()["not_handled"] == ["default/d"]


def test_exit_status_says_whether_all_were_handled() -> None:
    def status(*outcomes: str | None) -> int:
        targets = [target(str(i), outcome) for i, outcome in enumerate(outcomes)]
        return bulk.exit_status(bulk.summarize(TOKEN, targets, 1))

    assert status() == 0
    assert status("rescheduled", "skipped_terminal", "deleted") == 0
    assert status("rescheduled", None) == EXIT_TIMEOUT
    assert status("rescheduled", "error") == EXIT_TIMEOUT
    assert status("refused", None) == EXIT_REFUSED
    assert status("forbidden", "refused", None) == EXIT_DENIED
