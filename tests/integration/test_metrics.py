"""The documented metrics (docs/reference.md) move when the operator does what they count.

/metrics is scraped before and after each step and read with prometheus_client's own
parser; each step waits for its effect on the job (never sleeps), then for the counter.
"""

from __future__ import annotations

from collections.abc import Callable

from job_operator import names
from job_operator.reference import metric_kinds
from tests.helpers import wait_for
from tests.integration.conftest import HANG, Jobs, Operator, Process, Scrape

RESCHEDULES = "job_operator_reschedule_requests_total"
CANCELS = "job_operator_cancel_requests_total"
DISPATCHES = "job_operator_dispatches_total"
LATENCY = "job_operator_request_handled_latency_seconds"
AUTO_RESCHEDULES = "job_operator_auto_reschedules_total"
ORPHANS = "job_operator_orphans_found_total"
# Every metric of docs/reference.md, with its type: all are exported from the start.
DOCUMENTED = metric_kinds()


def scrape(operator: Operator) -> Scrape:
    return operator.scrape()


def wait_metric(operator: Operator, description: str, check: Callable[[Scrape], bool]) -> Scrape:
    def probe() -> Scrape | None:
        now = scrape(operator)
        return now if check(now) else None

    result = wait_for(probe, timeout=30, interval=0.2, description=description)
    assert result is not None
    return result


def handled(token: str) -> Callable[[dict[str, object]], bool]:
    def check(status: dict[str, object]) -> bool:
        record = status.get("reschedule") or {}
        return isinstance(record, dict) and record.get("request") == token

    return check


def test_documented_metrics_are_exported(operator: Operator) -> None:
    types = scrape(operator).types
    for name, kind in DOCUMENTED.items():
        assert types.get(name) == kind, (name, types.get(name))


def test_reschedule_and_orphan_metrics_move(
    jobs: Jobs,
    operator: Operator,
    simulator: Process,
) -> None:
    jobs.create("metered", annotations=HANG)
    first = jobs.wait_running("metered")["executor"]
    before = scrape(operator)
    assert before.value(DISPATCHES) >= 1

    # A manual reschedule: one request with outcome rescheduled, its latency observed,
    # and one more dispatch onto the fresh executor.
    jobs.annotate("metered", {names.RESCHEDULE_ANNOTATION: "m1"})
    jobs.wait(
        "metered",
        lambda s: handled("m1")(s) and s.get("state") == "running" and s.get("executor") != first,
        "rescheduled and running again",
    )
    after = wait_metric(
        operator,
        "the reschedule counted",
        lambda m: (
            m.value(RESCHEDULES, outcome="rescheduled")
            == before.value(RESCHEDULES, outcome="rescheduled") + 1
            and m.value(DISPATCHES) == before.value(DISPATCHES) + 1
            and m.value(f"{LATENCY}_count") == before.value(f"{LATENCY}_count") + 1
        ),
    )
    latency = after.value(f"{LATENCY}_sum") - before.value(f"{LATENCY}_sum")
    assert 0 <= latency < 30
    assert after.value(f"{LATENCY}_bucket", le="+Inf") == after.value(f"{LATENCY}_count")
    assert after.value(RESCHEDULES, outcome="skipped_terminal") == before.value(
        RESCHEDULES, outcome="skipped_terminal"
    )

    # The running job's executor deleted: an orphan found, rescheduled automatically.
    lost = jobs.status("metered")["executor"]
    jobs.kube.kubectl_run("delete", "ec", lost, "-n", jobs.namespace)
    jobs.wait(
        "metered",
        lambda s: s.get("state") == "running" and s.get("executor") not in (None, first, lost),
        "running again after the loss",
    )
    orphaned = wait_metric(
        operator,
        "the orphan counted",
        lambda m: (
            m.total(ORPHANS) == after.total(ORPHANS) + 1
            and m.value(AUTO_RESCHEDULES, result="rescheduled")
            == after.value(AUTO_RESCHEDULES, result="rescheduled") + 1
            and m.value(DISPATCHES) == after.value(DISPATCHES) + 1
        ),
    )
    # A manual request it was not: those counters stand still.
    assert orphaned.total(RESCHEDULES) == after.total(RESCHEDULES)
    assert orphaned.value(f"{LATENCY}_count") == after.value(f"{LATENCY}_count")


def test_skipped_and_cancel_outcomes_are_counted(
    jobs: Jobs,
    operator: Operator,
    simulator: Process,
) -> None:
    jobs.create("finished")
    jobs.wait_state("finished", "completed")
    before = scrape(operator)
    jobs.annotate("finished", {names.RESCHEDULE_ANNOTATION: "s1"})
    jobs.wait("finished", handled("s1"), "the request skipped")
    skipped = wait_metric(
        operator,
        "the skip counted",
        lambda m: (
            m.value(RESCHEDULES, outcome="skipped_terminal")
            == before.value(RESCHEDULES, outcome="skipped_terminal") + 1
        ),
    )
    assert skipped.value(RESCHEDULES, outcome="rescheduled") == before.value(
        RESCHEDULES, outcome="rescheduled"
    )
    assert skipped.value(DISPATCHES) == before.value(DISPATCHES)

    jobs.create("stopped", annotations=HANG)
    jobs.wait_running("stopped")
    jobs.annotate("stopped", {names.CANCEL_ANNOTATION: "c1"})
    jobs.wait_state("stopped", "cancelled")
    wait_metric(
        operator,
        "the cancel counted",
        lambda m: (
            m.value(CANCELS, outcome="cancelled") == skipped.value(CANCELS, outcome="cancelled") + 1
        ),
    )
