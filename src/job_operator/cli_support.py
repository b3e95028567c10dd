"""Small lookups the command line needs."""

from __future__ import annotations

import os

SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def lease_namespace() -> str:
    """The pod's namespace in a cluster (or $POD_NAMESPACE), else `default`."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    if os.path.exists(SERVICE_ACCOUNT_NAMESPACE):
        with open(SERVICE_ACCOUNT_NAMESPACE) as f:
            return f.read().strip()
    return "default"
