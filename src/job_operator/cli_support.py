"""Small helpers the command line's processes share."""

from __future__ import annotations

import asyncio
import os
from collections.abc import Coroutine
from typing import Any, TypeVar

import uvloop

T = TypeVar("T")

SERVICE_ACCOUNT_NAMESPACE = "/var/run/secrets/kubernetes.io/serviceaccount/namespace"


def lease_namespace() -> str:
    """The pod's namespace in a cluster (or $POD_NAMESPACE), else `default`."""
    if os.environ.get("POD_NAMESPACE"):
        return os.environ["POD_NAMESPACE"]
    if os.path.exists(SERVICE_ACCOUNT_NAMESPACE):
        with open(SERVICE_ACCOUNT_NAMESPACE) as f:
            return f.read().strip()
    return "default"


def run_loop(main: Coroutine[Any, Any, T]) -> T:
    """Run `main` in a new uvloop event loop: the operator spends about 10% less CPU per
    reschedule cycle than on asyncio's own loop (docs/performance.md)."""
    with asyncio.Runner(loop_factory=uvloop.new_event_loop) as runner:
        return runner.run(main)
