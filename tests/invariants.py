"""The invariant checker: what must hold of jobs, clusters and events after any storm.

Reusable by every resilience test (operator crashes, API server or etcd restarts,
two replicas): give it the tokens each job was sent and it reports every breach.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from job_operator import core, names
from job_operator.models import TERMINAL_STATES, Job

REQUEST_EVENT_REASONS = {"Rescheduled", "RescheduleSkipped", "InvalidRescheduleRequest"}


@dataclass
class Snapshot:
    """Jobs, clusters and events of one namespace, as listed from the API."""

    jobs: list[dict[str, Any]]
    executors: list[dict[str, Any]]
    events: list[dict[str, Any]]


@dataclass
class Report:
    violations: list[str] = field(default_factory=list)

    def check(self, ok: bool, message: str) -> None:
        if not ok:
            self.violations.append(message)

    def __bool__(self) -> bool:
        return not self.violations


def check_invariants(
    snapshot: Snapshot,
    tokens: Mapping[str, Sequence[str]],
    *,
    forced: Mapping[str, set[str]] | None = None,
    settled: bool = True,
) -> Report:
    """Check the storm's outcome.

    `tokens` maps a job name to the reschedule tokens written to it, in order,
    each written only after the one before was handled. `forced` names the
    tokens written with force. With `settled`, the operator has had time to
    finish: no dangling clusters may remain.
    """
    report = Report()
    forced = forced or {}
    by_name = {j["metadata"]["name"]: j for j in snapshot.jobs}
    live = [e for e in snapshot.executors if not e["metadata"].get("deletionTimestamp")]
    events_by_name = Counter(e["metadata"]["name"] for e in snapshot.events)
    report.check(all(n == 1 for n in events_by_name.values()), "an event name appears twice")

    for name, sent in tokens.items():
        raw = by_name.get(name)
        if raw is None:
            report.violations.append(f"{name}: job missing")
            continue
        job = Job.model_validate(raw)
        status = job.status
        record = status.reschedule
        # Every token handled, and the last one is the one recorded.
        report.check(
            record is not None and record.request == sent[-1],
            f"{name}: last token {sent[-1]!r} not recorded "
            f"({record.request if record else None!r})",
        )
        # Exactly one request event per token, no more and no less: status and events agree.
        mine = [
            e
            for e in snapshot.events
            if e["involvedObject"].get("uid") == job.metadata.uid
            and e["reason"] in REQUEST_EVENT_REASONS
        ]
        expected = {
            core.event_name(
                job,
                core.Event(
                    "Normal",
                    "",
                    "",
                    core.request_key(names.RESCHEDULE_ANNOTATION, core.token_digest(t)),
                ),
            )
            for t in sent
        }
        got = Counter(e["metadata"]["name"] for e in mine)
        report.check(
            set(got) == expected and all(c == 1 for c in got.values()),
            f"{name}: request events {dict(got)} do not match its {len(sent)} tokens",
        )
        # Rescheduled outcomes in events agree with the history (while it is unbounded).
        rescheduled_events = sum(1 for e in mine if e["reason"] == "Rescheduled")
        manual = [h for h in status.history if h.reason == "Rescheduled"]
        if len(status.history) < 20:
            report.check(
                len(manual) <= rescheduled_events,
                f"{name}: {len(manual)} Rescheduled history entries but "
                f"{rescheduled_events} Rescheduled events",
            )
        # No job reset that should not have been: terminal attempts leave only by force.
        if not forced.get(name):
            for entry in status.history:
                report.check(
                    not (entry.reason == "Rescheduled" and entry.state in TERMINAL_STATES),
                    f"{name}: a {entry.state} attempt was reset without force",
                )
        # Executors: the job's own is live; at most one live per non-terminal job.
        owned = [e for e in live if e["spec"]["jobRef"]["uid"] == job.metadata.uid]
        if status.executor:
            report.check(
                any(e["metadata"]["name"] == status.executor for e in owned)
                or status.state in TERMINAL_STATES,
                f"{name}: executor {status.executor} does not exist",
            )
        if status.state not in TERMINAL_STATES and settled:
            report.check(len(owned) <= 1, f"{name}: {len(owned)} live executors")
        # Executors are never reused.
        used = [h.executor for h in status.history if h.executor]
        if status.executor:
            used.append(status.executor)
        report.check(len(used) == len(set(used)), f"{name}: an executor was reused: {used}")

    if settled:
        uids = {j["metadata"]["uid"]: j for j in snapshot.jobs}
        for executor in live:
            owner = uids.get(executor["spec"]["jobRef"]["uid"])
            report.check(
                owner is not None
                and (owner.get("status") or {}).get("executor") == executor["metadata"]["name"],
                f"dangling executor {executor['metadata']['name']}",
            )
    return report
