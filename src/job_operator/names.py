"""The one source of truth for every name users and tools script against.

The CRDs (crds/), the models, the handlers, the CLI and the tests all take their
names from here; docs/reference.md lists them. They are a contract with users:
renaming one breaks their scripts and manifests.
"""

from typing import Final, Literal

GROUP: Final = "job-operator.dev"
VERSION: Final = "v1"
API_VERSION: Final = f"{GROUP}/{VERSION}"

JOB_KIND: Final = "Job"
JOB_PLURAL: Final = "jobs"
JOB_SINGULAR: Final = "job"
JOB_SHORT_NAMES: Final = ("ojob",)

EXECUTOR_KIND: Final = "ExecutorCluster"
EXECUTOR_PLURAL: Final = "executorclusters"
EXECUTOR_SINGULAR: Final = "executorcluster"
EXECUTOR_SHORT_NAMES: Final = ("ec",)
EXECUTOR_NAME_PREFIX: Final = "job-executor-"

# Annotations: requests written by users, never removed or rewritten by the operator.
RESCHEDULE_ANNOTATION: Final = f"{GROUP}/reschedule"
RESCHEDULE_FORCE_ANNOTATION: Final = f"{GROUP}/reschedule-force"
CANCEL_ANNOTATION: Final = f"{GROUP}/cancel"

# Annotations on a Job read by the executor simulator (never by the operator): per-job
# overrides of its seeded plan, for demos and tests.
SIMULATE_OUTCOME_ANNOTATION: Final = "simulate.job-operator.dev/outcome"
SIMULATE_RUN_SECONDS_ANNOTATION: Final = "simulate.job-operator.dev/run-seconds"

# Labels on ExecutorClusters.
JOB_NAME_LABEL: Final = f"{GROUP}/job-name"
JOB_UID_LABEL: Final = f"{GROUP}/job-uid"

# The field managers of the operator's writes (and how it recognises its own), and of
# the CLI's request annotations.
FIELD_MANAGER: Final = "job-operator"
CLI_FIELD_MANAGER: Final = "job-operator-cli"

# Who the operator's Events say posted them (`source.component`, `reportingComponent`:
# the FROM column of `kubectl describe`).
EVENT_COMPONENT: Final = "job-operator"

# kopf's finalizer: only on.event handlers exist, so kopf never adds it; should a
# handler ever need one, it carries the operator's group.
FINALIZER: Final = f"{GROUP}/finalizer"

# The Lease the replicas of the operator elect their leader with (`run --lease-name`).
LEASE_NAME: Final = "job-operator-leader"

# Condition types on a Job's status.
ConditionType = Literal["Dispatched", "Rescheduled", "RescheduleRequestValid", "CancelRequestValid"]
DISPATCHED: Final = "Dispatched"
RESCHEDULED: Final = "Rescheduled"
RESCHEDULE_REQUEST_VALID: Final = "RescheduleRequestValid"
CANCEL_REQUEST_VALID: Final = "CancelRequestValid"

# Reasons of conditions.
ConditionReason = Literal[
    "Pending",
    "ExecutorCreated",
    "Cancelled",
    "SkippedTerminal",
    "Forced",
    "ManualRequest",
    "ExecutorLost",
    "ExecutorLostTooOften",
    "Accepted",
    "TokenTooLong",
]
# Reasons of the Events the operator posts on Jobs.
EventReason = Literal[
    "Rescheduled",
    "RescheduleSkipped",
    "InvalidRescheduleRequest",
    "Cancelled",
    "CancelSkipped",
    "InvalidCancelRequest",
    "ExecutorLost",
    "ExecutorLostTooOften",
    "ExecutorFailed",
]

# The HTTP API's writes are made as the caller, under this field manager followed by the
# caller's user name (so status.reschedule.requestedBy names them).
API_FIELD_MANAGER: Final = "job-operator-api"
