"""The processes under test, and what /proc says about them (CPU time, memory)."""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path

CLOCK_TICKS = os.sysconf("SC_CLK_TCK")


def cpu_seconds(pid: int) -> float | None:
    """User + system CPU time of a process so far (None if it is gone)."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    fields = raw[raw.rfind(")") + 2 :].split()
    return (int(fields[11]) + int(fields[12])) / CLOCK_TICKS


def memory_kib(pid: int) -> dict[str, int]:
    """VmRSS and VmHWM (peak RSS) of a process, in KiB ({} if it is gone)."""
    try:
        text = Path(f"/proc/{pid}/status").read_text()
    except OSError:
        return {}
    found = {}
    for line in text.splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            found[key] = int(value.split()[0])
    return found


@dataclass
class ManagedProcess:
    """A job-operator subprocess (operator or simulator), logging to a file."""

    name: str
    argv: list[str]
    env: Mapping[str, str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    started_at: float = 0.0
    starts: int = 0

    def start(self) -> None:
        self.starts += 1
        with self.log_path.open("ab") as log:
            log.write(f"--- start {self.starts}: {' '.join(self.argv)}\n".encode())
            log.flush()
            self.started_at = time.time()
            self.popen = subprocess.Popen(
                self.argv,
                env=dict(self.env),
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
                start_new_session=True,
            )

    @property
    def pid(self) -> int:
        if self.popen is None:
            raise RuntimeError(f"{self.name} is not started")
        return self.popen.pid

    def running(self) -> bool:
        return self.popen is not None and self.popen.poll() is None

    def stop(self, timeout: float = 20.0) -> None:
        """SIGTERM, then SIGKILL past the deadline."""
        if self.popen is None or self.popen.poll() is not None:
            return
        self.popen.send_signal(signal.SIGTERM)
        try:
            self.popen.wait(timeout)
        except subprocess.TimeoutExpired:
            self.popen.kill()
            self.popen.wait(10)

    def log_tail(self, chars: int = 3000) -> str:
        try:
            return self.log_path.read_text(errors="replace")[-chars:]
        except OSError:
            return ""


def job_operator_argv(command: str, *args: str) -> list[str]:
    return [sys.executable, "-m", "job_operator", command, *args]


def machine_busy_seconds() -> float:
    """CPU seconds all cores have spent busy (not idle, not waiting for I/O) since boot."""
    try:
        fields = Path("/proc/stat").read_text().splitlines()[0].split()[1:]
    except (OSError, IndexError):
        return 0.0
    ticks = [int(f) for f in fields]
    idle = ticks[3] + (ticks[4] if len(ticks) > 4 else 0)
    # guest time is already counted in user time
    busy = sum(ticks[:8]) - idle
    return busy / CLOCK_TICKS


@dataclass
class CpuMeter:
    """CPU seconds used by named processes (and by everything else) over an interval."""

    pids: dict[str, int]
    start: dict[str, float] = field(default_factory=dict)
    wall_start: float = 0.0
    machine_start: float = 0.0

    def begin(self) -> None:
        self.wall_start = time.monotonic()
        self.machine_start = machine_busy_seconds()
        self.start = {}
        for name, pid in self.pids.items():
            used = cpu_seconds(pid)
            if used is not None:
                self.start[name] = used

    def end(self) -> dict[str, float]:
        """CPU seconds per process since begin(), `other` (the rest of the machine), `wall`."""
        result = {"wall": time.monotonic() - self.wall_start}
        machine = machine_busy_seconds() - self.machine_start
        for name, pid in self.pids.items():
            used = cpu_seconds(pid)
            if used is not None and name in self.start:
                result[name] = used - self.start[name]
        ours = sum(v for k, v in result.items() if k != "wall")
        result["other"] = max(0.0, machine - ours)
        return result
