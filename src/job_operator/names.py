"""The one source of truth for every name users and tools script against.

The CRDs (crds/), the models, the handlers, the CLI and the tests all take their
names from here, as ../CONTRACT.md fixes them.
"""

from typing import Final

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

# The field manager the operator writes with (and recognises as itself).
FIELD_MANAGER: Final = "job-operator"

# The HTTP API's writes are made as the caller, under this field manager followed by the
# caller's user name (so status.reschedule.requestedBy names them).
API_FIELD_MANAGER: Final = "job-operator-api"
