"""The executor simulator: plays the cluster provisioner, as kwok plays kubelets.

A separate process, never part of the operator's decisions. It watches
ExecutorClusters and moves each one through `Provisioning` -> `Running` -> an
outcome by merge-patching its status subresource (`phase`, `result`,
`message`): the same fields a real provisioner writes.

What happens to an ExecutorCluster is decided by `plan()`, a pure function of
the simulator's seed and the executor's uid, so the outcome never depends on the
order events arrive in, nor on restarts: a restarted simulator picks every
executor up at the phase it is in and carries it on to the same outcome.

The owning Job may override the plan, for demos and tests:

    simulate.job-operator.dev/outcome: succeed | fail | terminate | hang | stall
    simulate.job-operator.dev/run-seconds: "2.5"

(`hang` reaches `Running` and stays there, `stall` stays `Provisioning`; a hung
executor is looked at again when it changes or at the simulator's next re-list.)
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import logging
import math
import random
import signal
import sys
import uuid
from collections.abc import Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any, Final, Literal, get_args

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException
from kubernetes_asyncio.config import ConfigException

from job_operator import names
from job_operator.cli_support import run_loop
from job_operator.kube import Backoff, Kube, NotFound, retry_transient
from job_operator.models import ExecutorPhase

log = logging.getLogger("job_operator.simulator")

Outcome = Literal["succeed", "fail", "terminate", "hang", "stall"]
OUTCOMES: Final[tuple[str, ...]] = get_args(Outcome)
TERMINAL_PHASES: Final[frozenset[str]] = frozenset({"Succeeded", "Failed", "Terminated"})

# A watch ends after this long and the simulator lists again (a resync, and where a
# hung executor's Job annotations are read again).
WATCH_TIMEOUT_SECONDS: Final = 300
BACKOFF_MAX_SECONDS: Final = 30.0


# --- Configuration and the plan (pure) -----------------------------------------------


@dataclass(frozen=True)
class SimulatorConfig:
    """How the simulator behaves. Shares are probabilities in [0, 1], summing to <= 1."""

    provision_seconds: float = 1.0
    run_seconds: float = 3.0
    fail_share: float = 0.0
    terminate_share: float = 0.0
    seed: int | str = 0
    namespaces: list[str] | None = None  # None: all namespaces
    jitter: float = 0.2  # each delay is scaled by a factor drawn from [1 - jitter, 1 + jitter]

    def __post_init__(self) -> None:
        for name in ("provision_seconds", "run_seconds"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value >= 0):
                raise ValueError(f"{name} must be a finite number >= 0, not {value!r}")
        for name in ("fail_share", "terminate_share"):
            value = getattr(self, name)
            if not 0.0 <= value <= 1.0:
                raise ValueError(f"{name} must be between 0 and 1, not {value!r}")
        if self.fail_share + self.terminate_share > 1.0 + 1e-9:
            raise ValueError("fail_share + terminate_share must not exceed 1")
        if not 0.0 <= self.jitter <= 1.0:
            raise ValueError(f"jitter must be between 0 and 1, not {self.jitter!r}")
        if self.namespaces is not None and not self.namespaces:
            raise ValueError("namespaces must be None (all namespaces) or name at least one")


@dataclass(frozen=True)
class Overrides:
    """Per-job changes to the seeded plan, read from the Job's annotations."""

    outcome: Outcome | None = None
    run_seconds: float | None = None


@dataclass(frozen=True)
class Step:
    """One status write: `phase` (with `message`, `result`), `after` seconds after the last."""

    phase: ExecutorPhase
    after: float
    message: str
    result: dict[str, Any] | None = None

    def status(self) -> dict[str, Any]:
        # `result: None` removes a result left by an earlier write (merge patch).
        return {"phase": self.phase, "message": self.message, "result": self.result}


@dataclass(frozen=True)
class Plan:
    """What the simulator does to one executor, from its first phase to its last."""

    outcome: Outcome
    steps: tuple[Step, ...]
    result: dict[str, Any]  # what the executor returns if it succeeds

    @property
    def final_phase(self) -> ExecutorPhase:
        return self.steps[-1].phase

    def remaining(self, phase: str | None) -> tuple[Step, ...]:
        """The steps still to take from `phase` (None: not provisioned yet)."""
        if phase is None:
            return self.steps
        for index, step in enumerate(self.steps):
            if step.phase == phase:
                return self.steps[index + 1 :]
        return ()  # a terminal phase (or one this plan never reaches): nothing to do


def overrides_from_annotations(
    annotations: Mapping[str, str] | None, where: str = "job"
) -> Overrides:
    """Read the simulate.job-operator.dev/* annotations; invalid values are warned and ignored."""
    annotations = annotations or {}
    outcome: Outcome | None = None
    run_seconds: float | None = None
    raw_outcome = annotations.get(names.SIMULATE_OUTCOME_ANNOTATION)
    if raw_outcome is not None:
        value = raw_outcome.strip().lower()
        if value in OUTCOMES:
            outcome = value  # type: ignore[assignment]
        else:
            log.warning(
                "%s: ignoring %s=%r (expected one of %s)",
                where,
                names.SIMULATE_OUTCOME_ANNOTATION,
                raw_outcome,
                ", ".join(OUTCOMES),
            )
    raw_seconds = annotations.get(names.SIMULATE_RUN_SECONDS_ANNOTATION)
    if raw_seconds is not None:
        try:
            seconds = float(raw_seconds)
        except ValueError:
            seconds = math.nan
        if math.isfinite(seconds) and seconds >= 0:
            run_seconds = seconds
        else:
            log.warning(
                "%s: ignoring %s=%r (expected a number of seconds >= 0)",
                where,
                names.SIMULATE_RUN_SECONDS_ANNOTATION,
                raw_seconds,
            )
    return Overrides(outcome=outcome, run_seconds=run_seconds)


def _jittered(seconds: float, jitter: float, rng: random.Random) -> float:
    return max(0.0, seconds * (1.0 + jitter * rng.uniform(-1.0, 1.0)))


def plan(
    config: SimulatorConfig,
    key: str,
    *,
    annotations: Mapping[str, str] | None = None,
    job_input: Mapping[str, Any] | None = None,
) -> Plan:
    """The plan for the executor `key` (its uid): a pure function of (seed, key).

    `annotations` are the owning Job's (see `overrides_from_annotations`); a
    `run-seconds` override is taken as given, without jitter. The result is shaped
    like the seed API's; its `dataset_id` is the job input's when it has one.
    """
    rng = random.Random(f"{config.seed}:{key}")
    # Every draw happens, in this order, whatever the overrides: they never shift the rest.
    roll = rng.random()
    provision = _jittered(config.provision_seconds, config.jitter, rng)
    run = _jittered(config.run_seconds, config.jitter, rng)
    dataset_id = rng.randint(10_000, 99_999)
    snapshot_id = rng.randint(10**18, 2 * 10**18)
    recalculation_id = uuid.UUID(int=rng.getrandbits(128), version=4)

    outcome: Outcome
    if roll < config.fail_share:
        outcome = "fail"
    elif roll < config.fail_share + config.terminate_share:
        outcome = "terminate"
    else:
        outcome = "succeed"
    overrides = overrides_from_annotations(annotations, where=f"executor {key}")
    if overrides.outcome is not None:
        outcome = overrides.outcome
    if overrides.run_seconds is not None:
        run = overrides.run_seconds

    input_dataset = (job_input or {}).get("dataset_id")
    if isinstance(input_dataset, int) and not isinstance(input_dataset, bool):
        dataset_id = input_dataset
    result = {
        "dataset_id": dataset_id,
        "snapshot_id": snapshot_id,
        "recalculation_id": str(recalculation_id),
    }

    steps = [Step("Provisioning", 0.0, "Provisioning the cluster (simulated).")]
    if outcome != "stall":
        steps.append(Step("Running", provision, "The cluster is running the job (simulated)."))
    if outcome == "succeed":
        steps.append(Step("Succeeded", run, "The job succeeded (simulated).", result))
    elif outcome == "fail":
        steps.append(Step("Failed", run, "The job's step failed (simulated)."))
    elif outcome == "terminate":
        steps.append(Step("Terminated", run, "The cluster was terminated (simulated)."))
    return Plan(outcome=outcome, steps=tuple(steps), result=result)


# --- Runtime ---------------------------------------------------------------------------


@dataclass
class _Driver:
    """The task carrying one executor through its plan."""

    namespace: str
    name: str
    task: asyncio.Task[None] | None = None
    final_phase: str | None = None  # known once the plan is made


@dataclass
class Simulator:
    """Watches ExecutorClusters and runs one driver task per executor in flight."""

    config: SimulatorConfig
    kube: Kube
    drivers: dict[str, _Driver] = field(default_factory=dict)

    def observe(self, obj: Mapping[str, Any]) -> None:
        """An ExecutorCluster as listed or watched: start, keep or stop its driver."""
        meta = obj.get("metadata") or {}
        uid, namespace, name = meta.get("uid"), meta.get("namespace"), meta.get("name")
        if not (uid and namespace and name):
            return
        phase = (obj.get("status") or {}).get("phase")
        driver = self.drivers.get(uid)
        if meta.get("deletionTimestamp"):
            self.forget(uid)
            return
        if phase in TERMINAL_PHASES:
            if driver is not None and driver.final_phase != phase:
                log.info(
                    "executor %s/%s is %s (written by someone else): leaving it",
                    namespace,
                    name,
                    phase,
                )
                self.forget(uid)
            return
        if driver is not None:
            return  # already driven
        driver = _Driver(namespace=namespace, name=name)
        driver.task = asyncio.create_task(
            self.drive(uid, driver, obj), name=f"simulate {namespace}/{name}"
        )
        driver.task.add_done_callback(lambda task: self._done(uid, task))
        self.drivers[uid] = driver

    def forget(self, uid: str) -> None:
        """Stop driving an executor (deleted, or finished by someone else)."""
        driver = self.drivers.pop(uid, None)
        if driver is not None and driver.task is not None:
            driver.task.cancel()

    def _done(self, uid: str, task: asyncio.Task[None]) -> None:
        driver = self.drivers.get(uid)
        if driver is not None and driver.task is task:
            del self.drivers[uid]
        if not task.cancelled() and (error := task.exception()) is not None:
            log.error("simulating %s failed: %r", task.get_name(), error, exc_info=error)

    async def drive(self, uid: str, driver: _Driver, obj: Mapping[str, Any]) -> None:
        """Carry one executor from the phase it is in to the end of its plan."""
        where = f"executor {driver.namespace}/{driver.name}"
        try:
            await self._drive(uid, driver, obj, where)
        except NotFound:
            log.info("%s is gone", where)
        except (ApiException, OSError, TimeoutError, aiohttp.ClientError) as error:
            # Picked up again on its next event or at the next re-list.
            log.warning("%s: cannot write its status: %s", where, error)

    async def _drive(self, uid: str, driver: _Driver, obj: Mapping[str, Any], where: str) -> None:
        job_ref = (obj.get("spec") or {}).get("jobRef") or {}
        annotations, job_input = await self._read_job(driver.namespace, job_ref, where)
        the_plan = plan(self.config, uid, annotations=annotations, job_input=job_input)
        driver.final_phase = the_plan.final_phase
        # Start from the phase the executor is in now, not from a possibly stale event.
        current = await retry_transient(
            lambda: self.kube.custom.get_namespaced_custom_object(
                names.GROUP, names.VERSION, driver.namespace, names.EXECUTOR_PLURAL, driver.name
            )
        )
        current_meta = current.get("metadata") or {}
        if current_meta.get("uid") != uid or current_meta.get("deletionTimestamp"):
            return  # being deleted, or a new executor of the same name (its events drive it)
        phase = (current.get("status") or {}).get("phase")
        steps = the_plan.remaining(phase)
        log.debug(
            "%s: plan %s, from phase %s: %s",
            where,
            the_plan.outcome,
            phase,
            [(step.phase, round(step.after, 3)) for step in steps],
        )
        for step in steps:
            await asyncio.sleep(step.after)
            await self.kube.patch_executor_status(driver.namespace, driver.name, step.status())
            if step.phase in ("Failed", "Terminated"):
                log.info("%s -> %s: %s", where, step.phase, step.message)
            else:
                log.info("%s -> %s", where, step.phase)

    async def _read_job(
        self, namespace: str, job_ref: Mapping[str, Any], where: str
    ) -> tuple[dict[str, str], dict[str, Any] | None]:
        """The owning Job's annotations and input; empty when it cannot be read."""
        job_name, job_uid = job_ref.get("name"), job_ref.get("uid")
        if not job_name:
            return {}, None
        try:
            job = await self.kube.get_job_raw(namespace, job_name)
        except NotFound:
            return {}, None
        except (ApiException, OSError, TimeoutError, aiohttp.ClientError) as error:
            log.warning(
                "%s: cannot read job %s (%s): using the default plan", where, job_name, error
            )
            return {}, None
        meta = job.get("metadata") or {}
        if job_uid and meta.get("uid") != job_uid:
            return {}, None  # another job of the same name
        spec_input = (job.get("spec") or {}).get("input")
        return dict(meta.get("annotations") or {}), (
            spec_input if isinstance(spec_input, dict) else None
        )

    async def watch(self, namespace: str | None) -> None:
        """Follow ExecutorClusters in `namespace` (None: all), forever; listed again each
        time a watch ends (a resync: a hung executor's Job annotations are read again)."""
        scope = namespace or "all namespaces"
        await self.kube.list_then_watch(
            names.EXECUTOR_PLURAL,
            namespace,
            self._event,
            on_listed=functools.partial(self._listed, namespace),
            on_error=functools.partial(self._watch_failed, scope),
            watch_seconds=WATCH_TIMEOUT_SECONDS,
            resync=True,
            backoff=Backoff(first=1.0, most=BACKOFF_MAX_SECONDS),
        )

    def _event(self, kind: str, obj: dict[str, Any]) -> None:
        if kind in ("ADDED", "MODIFIED"):
            self.observe(obj)
        elif kind == "DELETED":
            uid = (obj.get("metadata") or {}).get("uid")
            if uid:
                self.forget(uid)

    def _listed(self, namespace: str | None, present: set[str]) -> None:
        """Executors deleted while no watch was open: stop driving them."""
        for uid, driver in list(self.drivers.items()):
            if uid not in present and namespace in (None, driver.namespace):
                self.forget(uid)

    @staticmethod
    def _watch_failed(scope: str, error: Exception) -> None:
        """Logged, and tried again after a backoff, whatever it is: a long-running
        simulator outlives odd answers, and a role not (yet) granting it list or watch."""
        if isinstance(error, ApiException):
            log.warning("watching executors in %s: %s %s", scope, error.status, error.reason)
        elif isinstance(error, NotFound | OSError | TimeoutError | aiohttp.ClientError):
            log.warning("watching executors in %s: %r", scope, error)
        else:  # keep the trace
            log.error("watching executors in %s", scope, exc_info=error)

    async def close(self) -> None:
        """Cancel every driver and wait for them to end."""
        tasks = [d.task for d in self.drivers.values() if d.task is not None]
        self.drivers.clear()
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def run(config: SimulatorConfig, kube: Kube, stop: asyncio.Event | None = None) -> None:
    """Simulate until `stop` is set (or the task is cancelled); then end every driver."""
    simulator = Simulator(config, kube)
    scopes: Iterable[str | None] = config.namespaces or [None]
    watchers = [
        asyncio.create_task(simulator.watch(ns), name=f"watch executors in {ns or '*'}")
        for ns in scopes
    ]
    waiters: list[asyncio.Task[Any]] = list(watchers)
    if stop is not None:
        waiters.append(asyncio.create_task(stop.wait(), name="simulator stop"))
    try:
        done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        for task in done:
            if task in watchers:
                task.result()  # a watcher only ends by failing: raise its error
    finally:
        for task in waiters:
            task.cancel()
        await asyncio.gather(*waiters, return_exceptions=True)
        await simulator.close()


# --- Command line ------------------------------------------------------------------------


def _non_negative(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"must be >= 0: {text!r}")
    return value


def _share(text: str) -> float:
    value = _non_negative(text)
    if value > 1:
        raise argparse.ArgumentTypeError(f"must be between 0 and 1: {text!r}")
    return value


def add_arguments(parser: argparse.ArgumentParser) -> None:
    """The `job-operator simulate` flags."""
    scope = parser.add_mutually_exclusive_group()
    scope.add_argument(
        "-n",
        "--namespace",
        action="append",
        dest="namespaces",
        metavar="NS",
        help="simulate executors in this namespace (repeatable)",
    )
    scope.add_argument(
        "-A",
        "--all-namespaces",
        action="store_true",
        help="simulate executors in all namespaces (the default without -n)",
    )
    parser.add_argument(
        "--provision-seconds",
        type=_non_negative,
        default=1.0,
        metavar="S",
        help="time from Provisioning to Running (default: %(default)s)",
    )
    parser.add_argument(
        "--run-seconds",
        type=_non_negative,
        default=3.0,
        metavar="S",
        help="time from Running to the outcome (default: %(default)s)",
    )
    parser.add_argument(
        "--fail-share",
        type=_share,
        default=0.0,
        metavar="P",
        help="share of executors that end Failed (default: %(default)s)",
    )
    parser.add_argument(
        "--terminate-share",
        type=_share,
        default=0.0,
        metavar="P",
        help="share of executors that end Terminated (default: %(default)s)",
    )
    parser.add_argument(
        "--seed",
        default="0",
        help="random seed: outcomes are a function of (seed, executor uid) (default: %(default)s)",
    )
    parser.add_argument(
        "--jitter",
        type=_share,
        default=0.2,
        metavar="F",
        help="scale each delay by a random factor in [1-F, 1+F] (default: %(default)s)",
    )
    # SUPPRESS: a parent parser's --kubeconfig (job-operator --kubeconfig X simulate) survives.
    parser.add_argument(
        "--kubeconfig",
        default=argparse.SUPPRESS,
        help="kubeconfig file (default: $KUBECONFIG, in-cluster, ~/.kube/config)",
    )


def config_from_args(args: argparse.Namespace) -> SimulatorConfig:
    seed: int | str = args.seed
    if isinstance(seed, str) and seed.lstrip("-").isdigit():
        seed = int(seed)
    return SimulatorConfig(
        provision_seconds=args.provision_seconds,
        run_seconds=args.run_seconds,
        fail_share=args.fail_share,
        terminate_share=args.terminate_share,
        seed=seed,
        namespaces=None if args.all_namespaces or not args.namespaces else list(args.namespaces),
        jitter=args.jitter,
    )


async def _serve(config: SimulatorConfig, kubeconfig: str | None) -> None:
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    signals = (signal.SIGTERM, signal.SIGINT)
    for signum in signals:
        loop.add_signal_handler(signum, stop.set)
    try:
        async with Kube.connect(kubeconfig) as kube:
            log.info(
                "simulating executors in %s (provision %ss, run %ss, fail %s, "
                "terminate %s, jitter %s, seed %r)",
                ", ".join(config.namespaces) if config.namespaces else "all namespaces",
                config.provision_seconds,
                config.run_seconds,
                config.fail_share,
                config.terminate_share,
                config.jitter,
                config.seed,
            )
            await run(config, kube, stop)
            log.info("simulator stopped")
    finally:
        for signum in signals:
            loop.remove_signal_handler(signum)


def main(args: argparse.Namespace) -> int:
    """Run the simulator until SIGTERM or SIGINT."""
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s"
    )
    try:
        config = config_from_args(args)
    except ValueError as error:
        print(f"job-operator simulate: {error}", file=sys.stderr)
        return 2
    try:
        run_loop(_serve(config, getattr(args, "kubeconfig", None)))
    except (ConfigException, OSError) as error:
        print(f"job-operator simulate: {error}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        pass
    return 0


if __name__ == "__main__":
    _parser = argparse.ArgumentParser(
        prog="python -m job_operator.simulator",
        description="Move ExecutorClusters through their phases, as a provisioner would.",
    )
    add_arguments(_parser)
    sys.exit(main(_parser.parse_args()))
