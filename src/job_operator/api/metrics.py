"""The API server's Prometheus metrics, in a registry of their own (the operator's are
not this process's)."""

from __future__ import annotations

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram

REGISTRY = CollectorRegistry()

REQUESTS = Counter(
    "job_operator_api_requests_total",
    "HTTP requests answered, by route (its template), status code and reschedule outcome "
    "(rescheduled, skipped_terminal, or none).",
    ["route", "status", "outcome"],
    registry=REGISTRY,
)
LATENCY = Histogram(
    "job_operator_api_request_duration_seconds",
    "From a request's arrival to its response, by route (waiting for the operator included).",
    ["route"],
    buckets=(0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60),
    registry=REGISTRY,
)
WAITING = Gauge(
    "job_operator_api_requests_waiting",
    "Reschedule requests waiting for the operator's outcome now (bounded by --max-waiting).",
    registry=REGISTRY,
)
