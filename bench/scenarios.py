"""The measurements: ceiling, storms, steady rates, API cost, start-up, memory.

Each returns a plain dict (JSON-ready) that bench.report renders. Times are wall-clock
seconds on this machine: the benchmark, the operator and the API server share one clock.
"""

from __future__ import annotations

import asyncio
import itertools
import logging
import math
import re
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Callable, Coroutine, Iterator, Sequence
from pathlib import Path
from typing import Any

from bench import apimetrics
from bench.client import ApiError
from bench.harness import Bench, job_name, run_pool
from bench.tracker import Batch, JobView, Key, Request

log = logging.getLogger("bench")
CEILING_PATH = "/apis/bench.job-operator.dev/v1/namespaces/{ns}/ceilings"
_tokens = itertools.count(1)


def percentile(values: Sequence[float], p: float) -> float | None:
    """Nearest-rank percentile (None for no values)."""
    if not values:
        return None
    ordered = sorted(values)
    rank = max(1, math.ceil(p / 100.0 * len(ordered)))
    return ordered[rank - 1]


def summary(values: Sequence[float]) -> dict[str, float | None]:
    return {
        "p50": percentile(values, 50),
        "p95": percentile(values, 95),
        "p99": percentile(values, 99),
        "max": max(values) if values else None,
        "mean": sum(values) / len(values) if values else None,
    }


def new_token(label: str) -> str:
    return f"bench-{label}-{time.time_ns()}-{next(_tokens)}"


def cpu_share(cpu: dict[str, float]) -> dict[str, float]:
    """CPU seconds per process as a share of one core over the wall time."""
    wall = cpu.get("wall") or 0.0
    return {k: v / wall for k, v in cpu.items() if k != "wall" and wall > 0}


# --- the ceiling --------------------------------------------------------------------------


def ceiling_status(counter: int) -> dict[str, Any]:
    """A status the size and shape of a Job's, changed on every write."""
    stamp = time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())
    condition = {
        "status": "True",
        "reason": "ExecutorCreated",
        "message": f"attempt {counter} on job-executor-00000000-0000-4000-8000-{counter:012d}",
        "lastTransitionTime": stamp,
        "observedGeneration": 1,
    }
    return {
        "state": "running",
        "executor": f"job-executor-00000000-0000-4000-8000-{counter:012d}",
        "attempt": counter,
        "updatedAt": stamp,
        "conditions": [
            {**condition, "type": "Dispatched"},
            {**condition, "type": "Rescheduled", "reason": "ManualRequest"},
            {**condition, "type": "RescheduleRequestValid", "reason": "Accepted"},
        ],
        "history": [
            {"attempt": counter - 1, "executor": "job-executor-previous", "state": "running"}
        ],
    }


async def measure_ceiling(bench: Bench, seconds: float, objects: int) -> dict[str, Any]:
    """Status PATCHes per second from a plain client with `connections` connections."""
    namespace = bench.plan.namespace
    path = CEILING_PATH.format(ns=namespace)
    api = bench.load
    connections = bench.plan.connections
    objects = max(objects, connections)

    async def create(index: int) -> None:
        body = {
            "apiVersion": "bench.job-operator.dev/v1",
            "kind": "Ceiling",
            "metadata": {"name": f"ceiling-{index:04d}"},
            "spec": {},
        }
        try:
            await api.request("POST", path, body)
        except ApiError as error:
            if error.status != 409:
                raise

    await run_pool(connections, range(objects), create)
    _, work_before = await bench.server_totals()
    latencies: list[float] = []
    errors = 0
    warmup = min(1.0, seconds / 4)
    loop = asyncio.get_running_loop()
    begin = loop.time()
    measure_from = begin + warmup
    end = measure_from + seconds
    counter = itertools.count(1)
    meter = bench.cpu_meter()
    metered = False

    async def worker(slot: int) -> None:
        nonlocal errors, metered
        mine = [i for i in range(objects) if i % connections == slot]
        for index in itertools.cycle(mine):
            now = loop.time()
            if now >= end:
                return
            if now >= measure_from and not metered:
                metered = True
                meter.begin()
            body = {"status": ceiling_status(next(counter))}
            started = loop.time()
            try:
                await api.request(
                    "PATCH",
                    f"{path}/ceiling-{index:04d}/status",
                    body,
                    content_type="application/merge-patch+json",
                )
            except ApiError:
                errors += 1
                continue
            if started >= measure_from:
                latencies.append(loop.time() - started)

    await asyncio.gather(*(worker(slot) for slot in range(connections)))
    cpu = meter.end()
    _, work_after = await bench.server_totals()
    patches = len(latencies) + errors
    return {
        "server": apimetrics.server_work(work_before, work_after, patches) if work_after else None,
        "apiserver_cpu_ms_per_patch": cpu.get("apiserver", 0.0) * 1000 / max(1, patches),
        "seconds": seconds,
        "connections": connections,
        "objects": objects,
        "patches": len(latencies),
        "errors": errors,
        "rate": len(latencies) / seconds,
        "latency": summary(latencies),
        "cpu": cpu,
        "cpu_share": cpu_share(cpu),
    }


# --- populations --------------------------------------------------------------------------


def running(view: JobView) -> bool:
    return view.running


def dispatched(view: JobView) -> bool:
    return bool(view.executor)


async def fabricate_population(bench: Bench, size: int) -> dict[str, Any] | None:
    """Jobs job-00000 .. job-<size-1>, each running on its own ExecutorCluster.

    The missing ones are made by the benchmark itself, with the operator stopped, in the
    exact state the operator and the simulator would leave them in (computed with the
    operator's own core): create the Job, create its ExecutorCluster, set the cluster's
    phase to Running, write the Job's status. Four writes a job instead of a dozen
    requests through the operator, so a 10,000-job population takes a minute or two.
    """
    namespace = bench.plan.namespace
    wanted = [job_name(i) for i in range(size)]
    missing = [n for n in wanted if (namespace, n) not in bench.jobs.views]
    if not missing:
        return None
    if bench.operator.running():
        bench.operator.stop()
    meter = bench.cpu_meter()
    meter.begin()
    started = time.monotonic()
    await run_pool(bench.plan.connections, missing, lambda n: bench.fabricate_job(namespace, n))
    keys = [(namespace, n) for n in wanted]
    late = await bench.jobs.wait_jobs(keys, running, timeout=60)
    took = time.monotonic() - started
    cpu = meter.end()
    return {
        "before": size - len(missing),
        "created": len(missing),
        "seconds": took,
        "rate": len(missing) / took if took else 0.0,
        "not_running": len(late),
        "cpu": cpu,
        "cpu_share": cpu_share(cpu),
    }


# --- request batches ----------------------------------------------------------------------


async def _send(bench: Bench, request: Request) -> None:
    request.sent = time.time()
    try:
        await bench.annotate(request.key, request.token)
    except (ApiError, OSError, TimeoutError) as error:
        bench.jobs.failed(request, str(error))
        return
    request.acked = time.time()


class Measured:
    """API counters, events, CPU and operator counters around a batch."""

    def __init__(self, bench: Bench, namespace: str) -> None:
        self.bench = bench
        self.namespace = namespace
        self.meter = bench.cpu_meter()

    async def begin(self) -> None:
        self.events = await self.bench.count_events(self.namespace)
        self.totals, self.work = await self.bench.server_totals()
        self.counters = await self.bench.operator_counters()
        self.meter.begin()

    async def end(self, cycles: int) -> dict[str, Any]:
        cpu = self.meter.end()
        totals, work = await self.bench.server_totals()
        counters = await self.bench.operator_counters()
        events = await self.bench.count_events(self.namespace) - self.events
        cost = apimetrics.breakdown(self.totals, totals, cycles, events_posted=events)
        operator = {k: counters.get(k, 0.0) - self.counters.get(k, 0.0) for k in counters}
        per_cycle = {
            k: v * 1000.0 / cycles for k, v in cpu.items() if k not in ("wall", "other") and cycles
        }
        return {
            "cpu": cpu,
            "cpu_share": cpu_share(cpu),
            "cpu_ms_per_cycle": per_cycle,
            "api": cost.to_json() if totals else None,
            "server": apimetrics.server_work(self.work, work, cycles) if work else None,
            "operator_counters": {k: v for k, v in operator.items() if v},
        }


def batch_result(batch: Batch, first_sent: float, label: str) -> dict[str, Any]:
    requests = batch.requests
    recorded = [r for r in requests if r.recorded is not None]
    latencies = [r.latency for r in recorded if r.latency is not None]
    decisions = [r.decision_latency for r in recorded if r.decision_latency is not None]
    cycles = [r.cycle for r in requests if r.cycle is not None]
    span = (batch.last_recorded - first_sent) if recorded else 0.0
    outcomes: dict[str, int] = {}
    for r in recorded:
        outcomes[str(r.outcome)] = outcomes.get(str(r.outcome), 0) + 1
    return {
        "label": label,
        "requests": len(requests),
        "recorded": len(recorded),
        "redispatched": sum(1 for r in requests if r.redispatched is not None),
        "running": len(cycles),
        "failed_writes": sum(1 for r in requests if r.error),
        "outcomes": outcomes,
        "span_seconds": span,
        "throughput": len(recorded) / span if span > 0 else None,
        "latency": summary(latencies),
        "decision_latency": summary(decisions),
        "cycle": summary(cycles),
    }


async def quiesce(bench: Bench, limit: float = 180.0, window: float = 1.0) -> float:
    """Wait until the operator is idle (< 10% of a core over `window`); seconds waited.

    "All jobs running" is not enough between batches: the operator may still be working
    through the events of the last one (deleted clusters, its own writes), and a batch
    measured meanwhile would pay for it.
    """
    from bench.procs import cpu_seconds

    started = time.monotonic()
    while time.monotonic() - started < limit and bench.operator.running():
        before = cpu_seconds(bench.operator.pid)
        await asyncio.sleep(window)
        after = cpu_seconds(bench.operator.pid)
        if before is None or after is None or (after - before) / window < 0.10:
            break
    return time.monotonic() - started


async def storm(bench: Bench, size: int) -> dict[str, Any]:
    """Reschedule `size` running jobs at once (32 writers); throughput and latencies."""
    namespace = bench.plan.namespace
    keys = [(namespace, job_name(i)) for i in range(size)]
    await bench.jobs.wait_jobs(keys, running, timeout=60)
    quiet = await quiesce(bench)
    keys = [k for k in keys if bench.jobs.idle(k)]
    batch = Batch(f"storm-{size}", expected=len(keys))
    measured = Measured(bench, namespace)
    await measured.begin()
    requests = [bench.jobs.register(k, new_token(f"s{size}"), batch) for k in keys]
    profiler = start_profiler(bench, f"storm-{size}")
    first_sent = time.time()
    annotate_started = time.monotonic()
    await run_pool(bench.plan.connections, requests, lambda r: _send(bench, r))
    annotate_seconds = time.monotonic() - annotate_started
    batch.sealed(len(keys))
    await _wait(batch.all_recorded, 120 + size / 10)
    await _wait(batch.all_running, 120 + size / 10)
    profile = stop_profiler(profiler)
    bench.jobs.abandon(batch)
    await asyncio.sleep(bench.plan.settle_seconds)
    result = batch_result(batch, first_sent, f"storm {size}")
    result["quiesce_seconds"] = quiet
    if profile is not None:
        result["profile"] = profile
    result["annotate_seconds"] = annotate_seconds
    result["annotate_rate"] = len(keys) / annotate_seconds if annotate_seconds else None
    result["full_cycle_span_seconds"] = (
        (batch.last_running - first_sent) if batch.last_running else None
    )
    result.update(await measured.end(len(keys)))
    return result


def start_profiler(bench: Bench, label: str) -> tuple[subprocess.Popen[bytes], Path] | None:
    """py-spy recording the operator (when asked for and installed)."""
    if not bench.plan.profile:
        return None
    exe = shutil.which("py-spy") or str(Path(sys.executable).with_name("py-spy"))
    if not Path(exe).exists():
        log.warning("--profile: py-spy is not installed; no profile")
        return None
    out = bench.workdir / f"profile-{label}.txt"
    argv = [exe, "record", "-p", str(bench.operator.pid), "-r", "100", "-f", "raw"]
    argv += ["-o", str(out), "--nonblocking"]
    proc = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    return proc, out


def stop_profiler(
    profiler: tuple[subprocess.Popen[bytes], Path] | None,
) -> dict[str, Any] | None:
    """Stop py-spy; the operator's hottest frames (self and inclusive shares)."""
    if profiler is None:
        return None
    proc, out = profiler
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()
        return None
    return summarise_profile(out)


def summarise_profile(path: Path, top: int = 25) -> dict[str, Any] | None:
    """Self and inclusive sample shares of the frames of a py-spy raw (collapsed) file."""
    try:
        lines = path.read_text().splitlines()
    except OSError:
        return None
    own: Counter[str] = Counter()
    inclusive: Counter[str] = Counter()
    total = 0
    for line in lines:
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [re.sub(r":\d+\)$", ")", f) for f in stack.split(";")]
        own[frames[-1]] += n
        for frame in set(frames):
            inclusive[frame] += n
    if not total:
        return None
    return {
        "samples": total,
        "file": str(path),
        "self": [(f, n / total) for f, n in own.most_common(top)],
        "inclusive": [(f, n / total) for f, n in inclusive.most_common(top * 3)],
    }


async def _wait(event: asyncio.Event, timeout: float) -> bool:
    try:
        await asyncio.wait_for(event.wait(), timeout)
    except TimeoutError:
        return False
    return True


def idle_keys(bench: Bench, namespace: str) -> Iterator[Key]:
    """The namespace's jobs, round and round, skipping those not ready for a request."""
    keys = sorted(k for k in bench.jobs.views if k[0] == namespace)
    if not keys:
        return
    misses = 0
    for key in itertools.cycle(keys):
        if bench.jobs.idle(key):
            misses = 0
            yield key
        else:
            misses += 1
            if misses > len(keys):
                return


async def steady(
    bench: Bench,
    rate: float,
    seconds: float,
    keys: Iterator[Key],
    namespace: str | None = None,
    label: str | None = None,
    wait_for: str = "running",
    send: Callable[[Bench, Request], Coroutine[Any, Any, None]] = _send,
) -> dict[str, Any]:
    """Open loop: requests arrive at `rate` per second for `seconds`, on distinct idle jobs
    (written by `send`: an annotation, unless told otherwise)."""
    namespace = namespace or bench.plan.namespace
    count = max(1, round(rate * seconds))
    chosen: list[Key] = []
    seen: set[Key] = set()
    for key in keys:
        if key in seen:
            break
        chosen.append(key)
        seen.add(key)
        if len(chosen) == count:
            break
    label = label or f"steady {rate:g}/s"
    quiet = await quiesce(bench)
    batch = Batch(label, expected=len(chosen))
    measured = Measured(bench, namespace)
    await measured.begin()
    loop = asyncio.get_running_loop()
    start = loop.time() + 0.1
    wall_offset = time.time() - loop.time()
    sends: list[asyncio.Task[None]] = []
    lags: list[float] = []
    for index, key in enumerate(chosen):
        due = start + index / rate
        delay = due - loop.time()
        if delay > 0:
            await asyncio.sleep(delay)
        request = bench.jobs.register(key, new_token(f"r{rate:g}"), batch)
        request.scheduled = due + wall_offset
        lags.append(max(0.0, loop.time() - due))
        sends.append(asyncio.create_task(send(bench, request)))
    await asyncio.gather(*sends)
    batch.sealed(len(chosen))
    first_sent = min((r.sent for r in batch.requests), default=time.time())
    await _wait(batch.all_recorded, 120 + len(chosen) / 10)
    done = batch.all_running if wait_for == "running" else batch.all_redispatched
    await _wait(done, 120 + len(chosen) / 10)
    bench.jobs.abandon(batch)
    await asyncio.sleep(bench.plan.settle_seconds)
    result = batch_result(batch, first_sent, label)
    result["rate"] = rate
    result["seconds"] = seconds
    result["offered_rate"] = len(chosen) / seconds
    result["sender_lag"] = summary(lags)
    result["quiesce_seconds"] = quiet
    result.update(await measured.end(len(chosen)))
    return result


async def redispatch_cost(bench: Bench, jobs: int, rate: float) -> dict[str, Any]:
    """API writes per reschedule-to-redispatch cycle, where no simulator runs.

    Jobs in the idle namespace are dispatched but their ExecutorClusters never start,
    so the batch holds only the operator's reschedule and redispatch (and the
    benchmark's annotations): nothing follows an executor to Running.
    """
    namespace = bench.plan.idle_namespace
    job_names = [f"cost-{i:05d}" for i in range(jobs)]
    await bench.create_jobs(namespace, job_names)
    keys = [(namespace, n) for n in job_names]
    late = await bench.jobs.wait_jobs(keys, dispatched, timeout=120 + jobs / 10)
    await asyncio.sleep(bench.plan.settle_seconds)
    ready = iter([k for k in keys if k not in late])

    # The tracker's idea of "idle" is running; here dispatched is the resting state.
    result = await steady(
        bench,
        rate,
        jobs / rate,
        ready,
        namespace=namespace,
        label="redispatch cost",
        wait_for="redispatched",
    )
    result["not_dispatched"] = len(late)
    return result


# --- start-up and memory ------------------------------------------------------------------


async def startup(bench: Bench, population: int) -> dict[str, Any]:
    """(Re)start the operator with `population` jobs present; time its first handlings.

    Two requests wait while it is down: on the first job and on the last one in list
    order, so "first" is the first handling and "last" is when it has caught up with
    everything it lists at start. Then the seconds until its CPU use has settled.
    """
    namespace = bench.plan.namespace
    before = bench.operator_memory()
    stop_seconds = None
    if bench.operator.running():
        stopped = time.monotonic()
        bench.operator.stop()
        stop_seconds = time.monotonic() - stopped
    keys = [(namespace, job_name(0)), (namespace, job_name(population - 1))]
    await bench.jobs.wait_jobs(keys, running, timeout=60)
    batch = Batch(f"startup {population}", expected=len(keys))
    requests = [bench.jobs.register(k, new_token("start"), batch) for k in keys]
    for request in requests:
        await _send(bench, request)
    batch.sealed(len(keys))
    ready_seconds = await bench.start_operator()
    spawned = bench.operator.started_at
    await _wait(batch.all_recorded, 300)
    recorded = [r.recorded - spawned for r in requests if r.recorded is not None]
    settled = await _cpu_settled(bench, spawned)
    await _wait(batch.all_running, 120)
    bench.jobs.abandon(batch)
    after = bench.operator_memory()
    return {
        "population": population,
        "stop_seconds": stop_seconds,
        "ready_seconds": ready_seconds,
        "first_handled_seconds": min(recorded) if recorded else None,
        "all_handled_seconds": max(recorded) if len(recorded) == len(keys) else None,
        "settled_seconds": settled,
        "memory_before_restart_kib": before,
        "memory_after_start_kib": after,
    }


async def _cpu_settled(bench: Bench, spawned: float, window: float = 2.0) -> float | None:
    """Seconds from spawn until the operator used < 10% of a core over `window` seconds."""
    from bench.procs import cpu_seconds

    deadline = time.time() + 300
    while time.time() < deadline:
        before = cpu_seconds(bench.operator.pid)
        at = time.time()
        await asyncio.sleep(window)
        after = cpu_seconds(bench.operator.pid)
        if before is None or after is None:
            return None
        if (after - before) / window < 0.10:
            return at - spawned
    return None
