"""The invariant checkers: what must hold of jobs, clusters and events after any storm
(`check_invariants`), of clusters at every moment during one (`ClusterLedger`), and of
events for a while after it (`late_request_events`).

Reusable by every resilience test (operator crashes, API server or etcd restarts,
two replicas): give them the tokens each job was sent and they report every breach.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Mapping, Sequence
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
                job, core.request_key(names.RESCHEDULE_ANNOTATION, core.token_digest(t))
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


@dataclass
class LedgerEntry:
    """One ExecutorCluster: its job and attempt, and when (positions in the audit log) it
    was created and deleted."""

    job_uid: str
    attempt: int
    created: int
    deleted: int | None = None
    confirmed: bool = False  # known to have existed (a create answered 201, or seen since)
    delete_tried: bool = False


@dataclass
class ClusterLedger:
    """The ExecutorClusters of one namespace, followed through every creation and deletion
    in the order the API server completed them (its audit log): a job must never have two
    live clusters for one attempt (a duplicate dispatch, e.g. a cluster made before a crash
    and not adopted after it), nor get a cluster for an attempt older than one it has live
    (a dispatch decided on a stale view of the job).

    A reschedule's handover is no breach: the fresh cluster (attempt n+1) is created before
    the status write names it, and the cluster left behind (attempt n) deleted after.

    A request cut short (its client killed, the server restarting) is answered 5xx even when
    the object was stored: such a cluster counts once something shows it existed (a later
    2xx answer about it, or a listing), from the moment it was created.
    """

    namespace: str
    clusters: dict[str, LedgerEntry] = field(default_factory=dict)
    position: int = 0
    # What the audit log said of each cluster (verb, code), for failure reports.
    said: dict[str, list[str]] = field(default_factory=dict)

    def follow(self, audit_events: Iterable[Mapping[str, Any]]) -> None:
        """Take in the audit log's answers about ExecutorClusters in this namespace
        (creations are logged at level Request, so with the object's spec)."""
        for event in audit_events:
            ref = event.get("objectRef") or {}
            if (
                event.get("stage") != "ResponseComplete"
                or ref.get("resource") != names.EXECUTOR_PLURAL
                or ref.get("apiGroup") != names.GROUP
                or ref.get("namespace") != self.namespace
                or not ref.get("name")
            ):
                continue
            self.position += 1
            name, verb = ref["name"], event.get("verb")
            code = int((event.get("responseStatus") or {}).get("code") or 500)
            self.said.setdefault(name, []).append(f"{verb} {code}")
            answered, unsure = 200 <= code < 300, code >= 500
            entry = self.clusters.get(name)
            if verb == "create" and (answered or unsure):
                spec = event["requestObject"]["spec"]
                self.clusters[name] = LedgerEntry(
                    spec["jobRef"]["uid"], spec["attempt"], self.position, confirmed=answered
                )
            elif entry is not None and answered:
                entry.confirmed = True
            if entry is not None and verb == "delete" and (answered or unsure):
                entry.delete_tried = True
                if answered:
                    entry.deleted = entry.deleted or self.position

    def violations(self) -> list[str]:
        """Every moment a job was given a cluster while it had one live for that attempt
        or a later one."""
        by_job: dict[str, list[tuple[str, LedgerEntry]]] = {}
        for name, entry in self.clusters.items():
            if entry.confirmed:
                by_job.setdefault(entry.job_uid, []).append((name, entry))
        found = []
        for uid, entries in by_job.items():
            for name, new in entries:
                for other, old in entries:
                    if (
                        old.created < new.created
                        and (old.deleted is None or old.deleted > new.created)
                        and old.attempt >= new.attempt
                    ):
                        found.append(
                            f"{name} (attempt {new.attempt}) created for job {uid} while "
                            f"{other} (attempt {old.attempt}) was live; the audit log said "
                            f"{self.said[name]} and {self.said[other]}"
                        )
        return found

    def agrees_with(self, executors: Sequence[Mapping[str, Any]]) -> list[str]:
        """Where the ledger and a listing of the clusters differ (the ledger's own check:
        a creation or deletion it missed would make it blind). A listed cluster is known
        to exist; one whose deletion was tried and is no longer listed is gone."""
        listed = {
            e["metadata"]["name"] for e in executors if not e["metadata"].get("deletionTimestamp")
        }
        for name in listed & set(self.clusters):
            self.clusters[name].confirmed = True
        differences = [
            f"{name}: listed, but the audit log shows no creation "
            f"(it said {self.said.get(name, [])})"
            for name in sorted(listed - set(self.clusters))
        ]
        for name, entry in sorted(self.clusters.items()):
            if name in listed and entry.deleted is not None:
                differences.append(f"{name}: listed, but deleted (it said {self.said[name]})")
            if name not in listed and entry.confirmed and entry.deleted is None:
                if entry.delete_tried:
                    entry.deleted = self.position  # an unanswered delete that did happen
                else:
                    differences.append(
                        f"{name}: not listed, but never deleted (it said {self.said[name]})"
                    )
        return differences


def late_request_events(
    settled: Sequence[Mapping[str, Any]], seen: Iterable[Mapping[str, Any]]
) -> list[str]:
    """Request events (`seen`, e.g. from a watch) that appeared or changed after the
    invariants held: every request then had its one event already (`settled`), so any
    such is a second event for a request already answered."""
    known = {e["metadata"]["name"]: e for e in settled}
    late = []
    for event in seen:
        if event.get("reason") not in REQUEST_EVENT_REASONS:
            continue
        name = event["metadata"]["name"]
        before = known.get(name)
        if before is None or before.get("count") != event.get("count"):
            late.append(
                f"{event['reason']} event {name} on {event['involvedObject'].get('name')} "
                "after every request had its event"
            )
    return late
