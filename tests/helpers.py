"""Test helpers: polling with deadlines (the only way tests wait), and the cluster handle."""

from __future__ import annotations

import asyncio
import dataclasses
import os
import subprocess
import sys
import time
from collections.abc import Awaitable, Callable, Mapping
from pathlib import Path
from typing import TypeVar

from testenv.controlplane import ControlPlane

T = TypeVar("T")


def _timeout_message(description: str, timeout: float, last: object) -> str:
    return f"timed out after {timeout:g} s waiting for {description} (last: {last!r})"


def wait_for(
    predicate: Callable[[], T | None],
    timeout: float = 30.0,
    interval: float = 0.1,
    description: str = "a condition",
    *,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """Call ``predicate`` until it returns something truthy; return that.

    Exceptions listed in ``ignore`` count as "not yet". On timeout, AssertionError names
    ``description`` and the last result (or exception).
    """
    deadline = time.monotonic() + timeout
    last: object = None
    while True:
        try:
            result = predicate()
        except ignore as e:
            last = e
        else:
            if result:
                return result
            last = result
        if time.monotonic() >= deadline:
            raise AssertionError(_timeout_message(description, timeout, last))
        time.sleep(interval)


async def async_wait_for(
    predicate: Callable[[], Awaitable[T | None]],
    timeout: float = 30.0,
    interval: float = 0.1,
    description: str = "a condition",
    *,
    ignore: tuple[type[BaseException], ...] = (),
) -> T:
    """The asyncio twin of :func:`wait_for`: ``predicate`` is a coroutine function."""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    last: object = None
    while True:
        try:
            result = await predicate()
        except ignore as e:
            last = e
        else:
            if result:
                return result
            last = result
        if loop.time() >= deadline:
            raise AssertionError(_timeout_message(description, timeout, last))
        await asyncio.sleep(interval)


class KubectlError(subprocess.CalledProcessError):
    """A kubectl command failed; the message carries its stderr."""

    def __str__(self) -> str:
        return f"{super().__str__()}\n{self.stderr or ''}".rstrip()


@dataclasses.dataclass(frozen=True)
class Kube:
    """The cluster the tests run against, and the kubectl to talk to it with."""

    kubeconfig: Path
    kubectl: str
    control_plane: ControlPlane | None = None
    kubectl_cache_dir: Path | None = None

    def kubectl_argv(self, *args: str) -> list[str]:
        argv = [self.kubectl, f"--kubeconfig={self.kubeconfig}"]
        if self.kubectl_cache_dir is not None:
            argv.append(f"--cache-dir={self.kubectl_cache_dir}")
        return [*argv, *args]

    def kubectl_run(
        self, *args: str, input: str | None = None, check: bool = True, timeout: float = 120.0
    ) -> subprocess.CompletedProcess[str]:
        """Run kubectl with this cluster's kubeconfig; raise KubectlError if ``check``."""
        argv = self.kubectl_argv(*args)
        proc = subprocess.run(
            argv,
            input=input,
            stdin=None if input is not None else subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=timeout,
            check=False,
        )
        if check and proc.returncode != 0:
            raise KubectlError(proc.returncode, argv, proc.stdout, proc.stderr)
        return proc


def run_plugin(
    kube: Kube, env: Mapping[str, str], *args: str, timeout: float = 120.0
) -> subprocess.CompletedProcess[str]:
    """`kubectl reschedule ARGS`, as a user runs the plugin: kubectl finds
    `kubectl-reschedule` on PATH (this venv's first). Flags cannot precede a plugin's
    name, so the cluster comes from $KUBECONFIG in `env`."""
    path = f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}"
    return subprocess.run(
        [kube.kubectl, "reschedule", *args],
        env={**env, "PATH": path},
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )
