"""API cost from the API server's own counters (`apiserver_request_total` on /metrics).

A snapshot before and after a measured batch gives the requests the server handled in
between, by verb, resource, subresource and code. Who made them is told apart by what
they touch, which the code fixes (see docs/performance.md):

- the benchmark: PATCH of jobs (the request annotations), POST of jobs, ceilings;
- the simulator: PATCH of executorclusters/status (and its GETs);
- the operator: everything else (jobs/status, executorclusters POST/DELETE, events).
"""

from __future__ import annotations

import re
from collections import Counter
from dataclasses import dataclass, field
from typing import Any

WRITE_VERBS = frozenset({"POST", "PUT", "PATCH", "DELETE", "DELETECOLLECTION", "APPLY"})
READ_VERBS = frozenset({"GET", "LIST"})
_LINE = re.compile(r"^apiserver_request_total\{(?P<labels>[^}]*)\}\s+(?P<value>\S+)")
_LABEL = re.compile(r'(\w+)="((?:[^"\\]|\\.)*)"')

# (verb, resource, subresource, code class) -> count
Key = tuple[str, str, str, str]


def parse_request_totals(text: str) -> Counter[Key]:
    """`apiserver_request_total` by (verb, resource, subresource, code) from /metrics text."""
    totals: Counter[Key] = Counter()
    for line in text.splitlines():
        match = _LINE.match(line)
        if not match:
            continue
        labels = dict(_LABEL.findall(match.group("labels")))
        if not labels.get("resource"):
            continue  # non-resource paths: /readyz, /metrics, /apis...
        key = (
            labels.get("verb", ""),
            labels["resource"],
            labels.get("subresource", ""),
            labels.get("code", ""),
        )
        totals[key] += int(float(match.group("value")))
    return totals


# Server-side work behind the requests: watch events sent, bytes answered, objects a LIST
# looked at, and the Go heap allocated (a fair proxy of the server's CPU).
SERVER_FAMILIES = {
    "apiserver_watch_events_total": "kind",
    "apiserver_watch_events_sizes_sum": "kind",
    "apiserver_response_sizes_sum": "verb resource",
    "apiserver_storage_list_evaluated_objects_total": "resource",
    "go_gc_heap_allocs_bytes_total": "",
}
_ANY = re.compile(r"^(?P<name>[a-z_]+)(\{(?P<labels>[^}]*)\})?\s+(?P<value>\S+)$")

ServerKey = tuple[str, str]  # (family, label value)


def parse_server_work(text: str) -> Counter[ServerKey]:
    """The SERVER_FAMILIES counters, summed by the label each is broken down by."""
    found: Counter[ServerKey] = Counter()
    for line in text.splitlines():
        if not line or line[0] == "#":
            continue
        match = _ANY.match(line)
        if not match or match.group("name") not in SERVER_FAMILIES:
            continue
        name = match.group("name")
        labels = dict(_LABEL.findall(match.group("labels") or ""))
        by = SERVER_FAMILIES[name]
        if by == "verb resource":
            sub = labels.get("subresource", "")
            label = f"{labels.get('verb', '')} {labels.get('resource', '')}"
            label += f"/{sub}" if sub else ""
        else:
            label = labels.get(by, "") if by else ""
        try:
            found[(name, label)] += float(match.group("value"))  # type: ignore[assignment]
        except ValueError:
            continue
    return found


def server_work(
    before: Counter[ServerKey], after: Counter[ServerKey], cycles: int
) -> dict[str, Any]:
    """Per-cycle server work between two snapshots, by family and label."""
    per = 1.0 / max(cycles, 1)
    work: dict[str, dict[str, float]] = {}
    for (name, label), value in after.items():
        delta = value - before.get((name, label), 0.0)
        if delta > 0:
            work.setdefault(name, {})[label or "all"] = delta * per
    return {
        "watch_events_per_cycle": sum(work.get("apiserver_watch_events_total", {}).values()),
        "watch_kib_per_cycle": sum(work.get("apiserver_watch_events_sizes_sum", {}).values())
        / 1024,
        "response_kib_per_cycle": sum(work.get("apiserver_response_sizes_sum", {}).values()) / 1024,
        "list_objects_per_cycle": sum(
            work.get("apiserver_storage_list_evaluated_objects_total", {}).values()
        ),
        "heap_alloc_mib_per_cycle": sum(work.get("go_gc_heap_allocs_bytes_total", {}).values())
        / 1024
        / 1024,
        "detail": work,
    }


def actor(verb: str, resource: str, subresource: str) -> str:
    """Who makes requests of this kind in the benchmark."""
    if resource == "ceilings":
        return "bench"
    if resource == "jobs" and subresource == "" and verb in WRITE_VERBS:
        return "bench"
    if resource == "executorclusters" and subresource == "status":
        return "simulator"
    if resource == "jobs" and subresource == "" and verb == "GET":
        return "operator+simulator"  # both read single jobs
    if resource == "executorclusters" and subresource == "" and verb == "GET":
        return "simulator"
    if resource == "namespaces":
        return "bench"
    return "operator"


@dataclass
class Breakdown:
    """Requests in a batch, per cycle, by actor and (verb resource/subresource)."""

    cycles: int
    writes: dict[str, dict[str, float]] = field(default_factory=dict)  # actor -> kind -> n
    reads: dict[str, dict[str, float]] = field(default_factory=dict)
    conflicts: dict[str, float] = field(default_factory=dict)  # kind -> 409s per cycle
    errors: dict[str, float] = field(default_factory=dict)  # other >= 400 per cycle
    events_counted_by_list: bool = False

    def writes_of(self, who: str) -> float:
        return sum(self.writes.get(who, {}).values())

    def reads_of(self, who: str) -> float:
        return sum(self.reads.get(who, {}).values())

    def to_json(self) -> dict[str, Any]:
        return {
            "cycles": self.cycles,
            "writes_per_cycle": self.writes,
            "reads_per_cycle": self.reads,
            "conflicts_per_cycle": self.conflicts,
            "errors_per_cycle": self.errors,
            "operator_writes_per_cycle": self.writes_of("operator"),
            "simulator_writes_per_cycle": self.writes_of("simulator"),
            "bench_writes_per_cycle": self.writes_of("bench"),
            "events_counted_by_list": self.events_counted_by_list,
        }


def kind_name(verb: str, resource: str, subresource: str) -> str:
    return f"{verb} {resource}{'/' + subresource if subresource else ''}"


def breakdown(
    before: Counter[Key], after: Counter[Key], cycles: int, events_posted: int | None = None
) -> Breakdown:
    """Per-cycle requests between two snapshots.

    `events_posted`: Events counted another way (by listing them), for servers whose
    events are served outside the API server's metrics (the test control plane's
    wrapper keeps events in memory); used only when /metrics shows no event POSTs.
    """
    result = Breakdown(cycles=cycles)
    per = 1.0 / max(cycles, 1)
    delta = after - before
    event_posts = 0
    for (verb, resource, subresource, code), count in sorted(delta.items()):
        if count <= 0:
            continue
        kind = kind_name(verb, resource, subresource)
        if resource == "events" and verb == "POST":
            event_posts += count
        if code == "409":
            result.conflicts[kind] = result.conflicts.get(kind, 0.0) + count * per
        elif code.isdigit() and int(code) >= 400:
            error_kind = f"{kind} {code}"
            result.errors[error_kind] = result.errors.get(error_kind, 0.0) + count * per
        who = actor(verb, resource, subresource)
        table = result.writes if verb in WRITE_VERBS else result.reads
        if verb not in WRITE_VERBS and verb not in READ_VERBS:
            continue  # WATCH and the like: long-lived, not a per-cycle cost
        bucket = table.setdefault(who, {})
        bucket[kind] = bucket.get(kind, 0.0) + count * per
    if event_posts == 0 and events_posted:
        bucket = result.writes.setdefault("operator", {})
        bucket["POST events"] = events_posted * per
        result.events_counted_by_list = True
    return result
