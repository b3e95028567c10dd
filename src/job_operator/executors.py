"""The ExecutorCluster a dispatch creates: its name and manifest."""

from __future__ import annotations

from typing import Any

from job_operator import names
from job_operator.models import Job


def new_executor_name(uuid: str) -> str:
    return f"{names.EXECUTOR_NAME_PREFIX}{uuid}"


def executor_manifest(job: Job, name: str) -> dict[str, Any]:
    """The ExecutorCluster for the job's next attempt, owned by the job."""
    meta = job.metadata
    return {
        "apiVersion": names.API_VERSION,
        "kind": names.EXECUTOR_KIND,
        "metadata": {
            "name": name,
            "namespace": meta.namespace,
            "labels": {names.JOB_NAME_LABEL: label_value(meta.name), names.JOB_UID_LABEL: meta.uid},
            "ownerReferences": [
                {
                    "apiVersion": names.API_VERSION,
                    "kind": names.JOB_KIND,
                    "name": meta.name,
                    "uid": meta.uid,
                    "controller": True,
                    "blockOwnerDeletion": True,
                }
            ],
        },
        "spec": {
            "jobRef": {"name": meta.name, "uid": meta.uid},
            "attempt": job.status.attempt + 1,
            "executorClass": job.spec.executor_class,
        },
    }


def label_value(text: str) -> str:
    """`text` cut to a valid label value (63 characters, alphanumeric at both ends)."""
    return text[:63].rstrip("-_.")
