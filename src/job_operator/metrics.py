"""Prometheus metrics of the operator, served on its metrics port."""

import logging

from prometheus_client import Counter, Gauge, Histogram

RESCHEDULE_REQUESTS = Counter(
    "job_operator_reschedule_requests_total",
    "Reschedule requests handled, by outcome (rescheduled, skipped_terminal, invalid).",
    ["outcome"],
)
CANCEL_REQUESTS = Counter(
    "job_operator_cancel_requests_total",
    "Cancel requests handled, by outcome (cancelled, skipped_terminal, invalid).",
    ["outcome"],
)
DISPATCHES = Counter(
    "job_operator_dispatches_total",
    "Jobs placed on a fresh ExecutorCluster (first dispatch, after a reschedule, after a loss).",
)
ORPHANS_FOUND = Counter(
    "job_operator_orphans_found_total",
    "Non-terminal jobs whose ExecutorCluster was deleted or Terminated (seen by the watch, "
    "or by the start-up or periodic list of clusters).",
)
AUTO_RESCHEDULES = Counter(
    "job_operator_auto_reschedules_total",
    "Automatic reschedules after an executor loss (and jobs failed for too many).",
    ["result"],
)
REQUEST_LATENCY = Histogram(
    "job_operator_request_handled_latency_seconds",
    "From the request annotation's write (managedFields time, 1 s resolution) to handling.",
    buckets=(0.05, 0.1, 0.25, 0.5, 1, 2, 5, 10, 30, 60, 300),
)
CONFLICTS = Counter(
    "job_operator_status_conflicts_total",
    "Status compare-and-swap writes refused because the job had changed (then re-decided).",
)
ERRORS = Counter(
    "job_operator_errors_total",
    "Unexpected errors, by stage; the work is tried again. Any is worth an alert.",
    ["stage"],
)
DANGLING_DELETED = Counter(
    "job_operator_dangling_executors_deleted_total",
    "ExecutorClusters deleted because no job will use them (job deleted, or moved on).",
)
QUEUE_DEPTH = Gauge(
    "job_operator_work_queue_depth",
    "Jobs waiting to be reconciled (each counted once, however many events named it).",
)


class KopfErrors(logging.Handler):
    """Counts what kopf logs as errors in ERRORS{stage="kopf"}: its failed API requests
    and watches (a 403, an API server away), which it retries by itself, and handler
    failures. Without it they would show in the log only."""

    def __init__(self) -> None:
        super().__init__(level=logging.ERROR)

    def emit(self, record: logging.LogRecord) -> None:
        ERRORS.labels("kopf").inc()
