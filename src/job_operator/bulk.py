"""Bulk reschedule: the morning after an outage, many jobs with one command.

A selection (`-l`, `--state`, `--type`, in `-n NS` or `-A`) names the jobs. `--dry-run`
shows what the operator would do with each, computed by the operator's own decision
code on the job as listed. A run writes one request per job, all with one token, never
more than `--max-in-flight` waiting for the operator at once, and watches every
outcome until `--timeout`.

The token names the run: the same command with the same `--token` (after Ctrl-C, a
lost connection, a timeout) resumes it. A job whose status already records the token
counts with its recorded outcome, a job already annotated with it is only waited for,
and jobs carrying the token that have left the selection since (a failed job
rescheduled is pending now) still count: no job is asked twice.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import sys
from collections import Counter, defaultdict, deque
from collections.abc import Iterable, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from typing import Any, Final, TextIO, get_args

import aiohttp
from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import ValidationError
from rich.console import Console
from rich.progress import BarColumn, MofNCompleteColumn, Progress, TextColumn, TimeElapsedColumn

from job_operator import core, names
from job_operator.cli import (
    EXIT_DENIED,
    EXIT_NOT_FOUND,
    EXIT_REFUSED,
    EXIT_TIMEOUT,
    CliError,
    denied,
    new_token,
    positive_int,
)
from job_operator.kube import Kube, NotFound, lean, transient
from job_operator.models import (
    TERMINAL_STATES,
    TOKEN_MAX_LENGTH,
    ExecutorCluster,
    Job,
    JobState,
    JobStatus,
)

log = logging.getLogger(__name__)

JOB_STATES: Final[tuple[str, ...]] = get_args(JobState)
EXIT_USAGE: Final = 2  # as argparse's own usage errors
DEFAULT_MAX_IN_FLIGHT: Final = 10
DEFAULT_TIMEOUT: Final = 300.0
WATCH_SECONDS: Final = 240  # a watch is renewed (from where it stopped) this often

HANDLED: Final = ("rescheduled", "skipped_terminal")
# What else can become of a selected job: the summary names each such job (exit_status).
FAILED: Final = ("forbidden", "refused", "error", "deleted")


# --- the selection -----------------------------------------------------------------------


def parse_states(values: Iterable[str]) -> frozenset[str]:
    """`--state` values (repeatable, each may be comma-separated): the contract's states."""
    states = {part.strip() for value in values for part in value.split(",") if part.strip()}
    unknown = sorted(states - set(JOB_STATES))
    if unknown:
        raise ValueError(
            f"unknown state {', '.join(unknown)}: the states are {', '.join(JOB_STATES)}"
        )
    return frozenset(states)


@dataclass(frozen=True)
class Selection:
    """Which jobs a bulk command is about. `namespace` None: every namespace."""

    namespace: str | None
    label_selector: str = ""
    states: frozenset[str] = frozenset()
    job_type: str | None = None

    @property
    def empty(self) -> bool:
        """Selects every job in scope: allowed only with --all."""
        return not (self.label_selector or self.states or self.job_type)

    def matches(self, job: Job) -> bool:
        """The part of the selection the API server cannot apply (it applies labels)."""
        return (not self.states or job.status.state in self.states) and (
            self.job_type is None or job.spec.type == self.job_type
        )


def usage_problem(
    *,
    name: str | None,
    selection: Selection,
    all_namespaces: bool,
    select_all: bool,
    bulk_only: Sequence[str],
    output: str,
    token: str | None,
) -> str | None:
    """Why these reschedule arguments do not make sense together (None: they do).

    `bulk_only` names the flags given that only a selection takes."""
    selecting = not selection.empty or all_namespaces or select_all
    if token is not None and not token.strip():
        return "--token must not be empty"
    if token is not None and len(token) > TOKEN_MAX_LENGTH:
        return f"--token is {len(token)} characters long; at most {TOKEN_MAX_LENGTH} are allowed"
    if name is not None:
        if selecting:
            return (
                f"give a job NAME or a selection (-l, --state, --type, -A, --all), not both: "
                f"{name!r} was given with a selection"
            )
        if bulk_only:
            return f"{', '.join(bulk_only)} go(es) with a selection, not with a job NAME"
        return None
    if selection.empty and not select_all:
        where = "in every namespace" if all_namespaces else "in the namespace"
        return (
            "no jobs selected: give a job NAME, a selection (-l LABELS, --state STATE, "
            f"--type TYPE), or --all to reschedule every job {where}"
        )
    if output == "yaml":
        return "a selection prints text or JSON lines: -o text or -o json"
    return None


# --- what a request does and did ---------------------------------------------------------


def request_annotations(token: str, force: bool) -> dict[str, str]:
    """The annotations one bulk request writes (a merge patch: others stay)."""
    annotations = {names.RESCHEDULE_ANNOTATION: token}
    if force:
        annotations[names.RESCHEDULE_FORCE_ANNOTATION] = token
    return annotations


def operator_plan(job: Job, clusters: Sequence[ExecutorCluster], now: datetime) -> core.Plan:
    """What the operator would do with `job` and its ExecutorClusters as they stand: its
    own decision code, core.plan, which its reconciler carries out. The dry run's one
    call into the rules, so it never carries a copy of them. (The operator's backoff
    settings change only when a redispatch may happen, never a request's outcome.)"""
    return core.plan(job, clusters, now, core.Policy())


@dataclass(frozen=True)
class Recorded:
    """What became of a request, as a job's status records it."""

    outcome: str  # rescheduled, skipped_terminal, refused
    detail: str
    previous_state: str | None = None
    force: bool = False


def recorded_outcome(status: JobStatus, token: str) -> Recorded | None:
    """The outcome `status` records for the reschedule `token` (None: not handled yet)."""
    record = status.reschedule
    if record is not None and record.request == token:
        return Recorded(
            record.outcome,
            f"was {record.previous_state}" + ("; forced" if record.force else ""),
            record.previous_state,
            record.force,
        )
    digest = core.token_digest(token)
    for rejected in status.rejected_requests:
        if rejected.annotation == names.RESCHEDULE_ANNOTATION and rejected.token_digest == digest:
            return Recorded("refused", rejected.message)
    return None


GONE: Final = Recorded("deleted", "the job was deleted")


@dataclass(frozen=True)
class Prediction:
    """A dry run's answer for one job."""

    outcome: str
    why: str
    already_handled: bool = False


def predict(
    job: Job, clusters: Sequence[ExecutorCluster], token: str, force: bool, now: datetime
) -> Prediction:
    """What the request would get from the operator, and why (its events' messages, in
    order: a lost cluster or a pending cancel is handled first, as the operator would)."""
    recorded = recorded_outcome(job.status, token)
    if recorded is not None:
        why = f"already handled with this token ({recorded.detail})"
        return Prediction(recorded.outcome, why, already_handled=True)
    asked = core.with_request(job, names.RESCHEDULE_ANNOTATION, token, force=force)
    plan = operator_plan(asked, clusters, now)
    predicted = recorded_outcome(plan.status or job.status, token)
    if predicted is None:  # the operator handles every new token: not expected
        return Prediction("unknown", "the operator's decision records no outcome")
    return Prediction(predicted.outcome, "; then ".join(e.message for e in plan.events))


def carries(job: Job, token: str) -> bool:
    """The job was asked with `token` (by an earlier run of the same command)."""
    return (
        job.metadata.annotations.get(names.RESCHEDULE_ANNOTATION) == token
        or recorded_outcome(job.status, token) is not None
    )


# --- listing -------------------------------------------------------------------------------


def api_message(error: ApiException) -> str:
    """The API server's own message for a failed call (one line)."""
    try:
        message = str(json.loads(error.body or "")["message"])
    except (TypeError, ValueError, KeyError):
        message = str(error.reason)
    return " ".join(message.split())


async def select(kube: Kube, selection: Selection, token: str | None) -> tuple[list[Job], str]:
    """The selected jobs, sorted, and a resourceVersion to watch them from.

    With the token of an earlier run, also every job in scope that carries it, whether
    or not it still matches: resuming then neither misses nor repeats one."""
    try:
        matched, resource_version = await kube.job_snapshot(
            selection.namespace, selection.label_selector
        )
        chosen = {j.metadata.uid: j for j in matched if selection.matches(j)}
        if token is not None:
            everything = matched
            if selection.label_selector:
                everything, resource_version = await kube.job_snapshot(selection.namespace)
                latest = {j.metadata.uid: j for j in everything}
                chosen = {uid: latest[uid] for uid in chosen if uid in latest}
            chosen.update({j.metadata.uid: j for j in everything if carries(j, token)})
    except ApiException as error:
        if error.status == 400:
            raise CliError(f"invalid selection: {api_message(error)}", EXIT_USAGE) from None
        raise denied(error) or error from None
    jobs = sorted(chosen.values(), key=lambda j: (j.metadata.namespace or "", j.metadata.name))
    return jobs, resource_version


def job_key(job: Job) -> str:
    return f"{job.metadata.namespace}/{job.metadata.name}"


async def clusters_of(kube: Kube, namespace: str | None) -> defaultdict[str, list[ExecutorCluster]]:
    """The ExecutorClusters in scope, by the job that they name ("namespace/name")."""
    found: defaultdict[str, list[ExecutorCluster]] = defaultdict(list)
    try:
        executors = await kube.list_executors(namespace)
    except ApiException as error:
        raise denied(error) or error from None
    for executor in executors:
        found[f"{executor.metadata.namespace}/{executor.spec.job_ref.name}"].append(executor)
    return found


# --- the outcome of a run ------------------------------------------------------------------


@dataclass
class Target:
    """One selected job in a run, and what became of it."""

    job: Job
    outcome: str | None = None  # one of HANDLED or FAILED; None: not handled (yet)
    detail: str = ""
    previous_state: str | None = None
    forced: bool = False
    already_handled: bool = False  # recorded before this run started
    written: bool = False  # carries the token: written by this run or an earlier one
    done: asyncio.Event = field(default_factory=asyncio.Event)

    @property
    def key(self) -> str:
        return job_key(self.job)


@dataclass(frozen=True)
class Summary:
    """A run's account: what became of each selected job."""

    token: str
    selected: int
    outcomes: dict[str, int]
    already_handled: int
    forced: tuple[str, ...]  # terminal jobs that run again because the run was forced
    not_handled: tuple[str, ...]
    failures: tuple[str, ...]  # "ns/name: outcome: why", for FAILED outcomes
    max_in_flight: int
    interrupted: bool = False

    def to_json(self) -> dict[str, Any]:
        return {
            "token": self.token,
            "selected": self.selected,
            "outcomes": self.outcomes,
            "already_handled": self.already_handled,
            "forced": list(self.forced),
            "not_handled": list(self.not_handled),
            "failures": list(self.failures),
            "max_in_flight": self.max_in_flight,
            "interrupted": self.interrupted,
        }


def summarize(
    token: str, targets: Sequence[Target], max_in_flight: int, interrupted: bool = False
) -> Summary:
    counts = Counter(t.outcome for t in targets if t.outcome is not None)
    return Summary(
        token=token,
        selected=len(targets),
        outcomes={outcome: counts[outcome] for outcome in (*HANDLED, *FAILED) if counts[outcome]},
        already_handled=sum(t.already_handled for t in targets),
        forced=tuple(
            f"{t.key} ({t.previous_state})"
            for t in targets
            if t.outcome == "rescheduled" and t.forced and t.previous_state in TERMINAL_STATES
        ),
        not_handled=tuple(t.key for t in targets if t.outcome is None),
        failures=tuple(f"{t.key}: {t.outcome}: {t.detail}" for t in targets if t.outcome in FAILED),
        max_in_flight=max_in_flight,
        interrupted=interrupted,
    )


def exit_status(summary: Summary) -> int:
    """0 when every selected job was handled (rescheduled or skipped_terminal; a job
    deleted meanwhile needs nothing); else the worst: a write the API server forbade, a
    request the operator refused, then a job not handled in time or not written."""
    if summary.outcomes.get("forbidden"):
        return EXIT_DENIED
    if summary.outcomes.get("refused"):
        return EXIT_REFUSED
    if summary.not_handled or summary.outcomes.get("error"):
        return EXIT_TIMEOUT
    return 0


def summary_text(summary: Summary) -> str:
    counted = ", ".join(f"{n} {outcome}" for outcome, n in summary.outcomes.items()) or "none"
    lines = [
        f"{summary.selected} jobs: {counted}"
        + (f" ({summary.already_handled} by an earlier run)" if summary.already_handled else "")
    ]
    if summary.forced:
        lines.append(f"forced, so run again: {', '.join(summary.forced)}")
    lines.extend(f"  {failure}" for failure in summary.failures)
    if summary.not_handled:
        how = "interrupted" if summary.interrupted else "not handled in time"
        lines.append(f"{how}: {len(summary.not_handled)}: {', '.join(summary.not_handled)}")
        lines.append(f"resume: the same command with --token {summary.token}")
    return "\n".join(lines)


# --- showing progress ----------------------------------------------------------------------


class Report:
    """Where a bulk command shows itself: JSON lines (-o json), a progress bar on a
    terminal, or else one text line per job. Results go to stdout, the bar to stderr."""

    def __init__(self, output: str, total: int, out: TextIO, err: TextIO) -> None:
        self.json = output == "json"
        self.out = out
        self.bar: Progress | None = None
        if not self.json and err.isatty():
            self.bar = Progress(
                TextColumn("{task.description}"),
                BarColumn(),
                MofNCompleteColumn(),
                TimeElapsedColumn(),
                TextColumn("{task.fields[counts]}"),
                console=Console(file=err),
                transient=True,
            )
            self.task = self.bar.add_task("reschedule", total=total, counts="")
        self.counts: Counter[str] = Counter()

    def __enter__(self) -> Report:
        if self.bar is not None:
            self.bar.start()
        return self

    def __exit__(self, *_: object) -> None:
        if self.bar is not None:
            self.bar.stop()

    def line(self, data: dict[str, Any], text: str) -> None:
        if self.json:
            print(json.dumps(data), file=self.out, flush=True)
        elif self.bar is not None and self.bar.live.is_started:  # above the bar
            self.bar.console.print(text, markup=False, highlight=False, soft_wrap=True)
        else:
            print(text, file=self.out, flush=True)

    def header(self, token: str, selected: int, force: bool, dry_run: bool) -> None:
        mode = "dry run: nothing is written" if dry_run else "resume with --token " + token
        self.line(
            {"token": token, "selected": selected, "force": force, "dry_run": dry_run},
            f"token {token}: {selected} jobs selected{' (forced)' if force else ''} ({mode})",
        )

    def predicted(self, job: Job, prediction: Prediction) -> None:
        self.line(
            {
                "job": job_key(job),
                "namespace": job.metadata.namespace,
                "name": job.metadata.name,
                "state": job.status.state,
                "outcome": prediction.outcome,
                "why": prediction.why,
                "already_handled": prediction.already_handled,
            },
            f"{job_key(job)}  {job.status.state}  ->  {prediction.outcome}: {prediction.why}",
        )

    def finished(self, target: Target, in_flight: int) -> None:
        self.counts[target.outcome or ""] += 1
        if self.bar is not None:
            counts = "  ".join(f"{k} {v}" for k, v in sorted(self.counts.items()))
            self.bar.update(self.task, advance=1, counts=f"{counts}  in flight {in_flight}")
            if target.outcome in HANDLED:
                return  # the bar counts them; failures get a line each
        self.line(
            {
                "job": target.key,
                "namespace": target.job.metadata.namespace,
                "name": target.job.metadata.name,
                "outcome": target.outcome,
                "detail": target.detail,
                "previous_state": target.previous_state,
                "state": target.job.status.state,
                "force": target.forced,
                "already_handled": target.already_handled,
                "in_flight": in_flight,
            },
            f"{target.key}: {target.outcome} ({target.detail}"
            + ("; by an earlier run" if target.already_handled else "")
            + ")",
        )

    def summary(self, summary: Summary) -> None:
        self.line({"summary": summary.to_json()}, summary_text(summary))


# --- a run ---------------------------------------------------------------------------------


class Run:
    """Writes the requests, at most `max_in_flight` waiting at once, and watches for
    their outcomes: one watch over the scope, from the selection's resourceVersion."""

    def __init__(
        self,
        kube: Kube,
        namespace: str | None,
        token: str,
        force: bool,
        max_in_flight: int,
        report: Report,
    ) -> None:
        self.kube = kube
        self.namespace = namespace
        self.token = token
        self.force = force
        self.max_in_flight = max_in_flight
        self.report = report
        self.targets: dict[str, Target] = {}
        self.in_flight = 0
        self.peak_in_flight = 0

    def add(self, job: Job) -> Target:
        """A selected job; one already handled with the token is done at once."""
        target = Target(job, written=carries(job, self.token))
        self.targets[job.metadata.uid] = target
        recorded = recorded_outcome(job.status, self.token)
        if recorded is not None:
            target.already_handled = True
            self.finish(target, recorded)
        return target

    def finish(self, target: Target, recorded: Recorded) -> None:
        if target.done.is_set():
            return
        target.outcome, target.detail = recorded.outcome, recorded.detail
        target.previous_state, target.forced = recorded.previous_state, recorded.force
        target.done.set()
        self.report.finished(target, self.in_flight)

    def observe(self, target: Target, job: Job) -> None:
        target.job = job
        recorded = recorded_outcome(job.status, self.token)
        if recorded is not None:
            self.finish(target, recorded)

    async def execute(self, resource_version: str, timeout: float) -> None:
        """Until every target has an outcome, or `timeout` seconds have passed."""
        waiting = [t for t in self.targets.values() if not t.done.is_set()]
        # Requests written by an earlier run first: they are waiting already.
        queue = deque(sorted(waiting, key=lambda t: not t.written))
        watcher = asyncio.create_task(self.watch(resource_version))
        workers = asyncio.gather(
            *(self.work(queue) for _ in range(min(self.max_in_flight, len(queue))))
        )
        try:
            async with asyncio.timeout(timeout):
                for first in asyncio.as_completed((watcher, workers)):
                    await first  # the watcher runs until cancelled: it returns only by error
                    break
        except TimeoutError:
            pass
        finally:
            watcher.cancel()
            workers.cancel()
            await asyncio.gather(watcher, workers, return_exceptions=True)

    async def work(self, queue: deque[Target]) -> None:
        """One request at a time: write it (unless an earlier run did), wait for it."""
        while queue:
            target = queue.popleft()
            if target.done.is_set():
                continue
            self.in_flight += 1
            self.peak_in_flight = max(self.peak_in_flight, self.in_flight)
            try:
                if not target.written:
                    await self.write(target)
                await target.done.wait()
            finally:
                self.in_flight -= 1

    async def write(self, target: Target) -> None:
        job = target.job
        try:
            written = await self.kube.annotate_job(
                job.metadata.namespace or "",
                job.metadata.name,
                request_annotations(self.token, self.force),
                names.CLI_FIELD_MANAGER,
                uid=job.metadata.uid,
            )
        except NotFound:
            self.finish(target, GONE)
        except ApiException as error:
            failure = denied(error)
            if failure is not None:
                self.finish(target, Recorded("forbidden", str(failure).removeprefix("forbidden: ")))
            elif error.status == 422:  # its uid is not the selected job's
                self.finish(target, Recorded("deleted", "the job was deleted and made again"))
            else:
                self.finish(target, Recorded("error", api_message(error)))
        except (OSError, aiohttp.ClientError, TimeoutError) as error:
            self.finish(target, Recorded("error", f"could not write the request: {error}"))
        else:
            target.written = True
            self.observe(target, written)

    async def watch(self, resource_version: str) -> None:
        """Follow every job in scope from `resource_version` (the selection's list) on."""
        await self.kube.list_then_watch(
            names.JOB_PLURAL,
            self.namespace,
            self.follow,
            on_listed=self.listed,
            on_error=self.watch_failed,
            resource_version=resource_version,
            watch_seconds=WATCH_SECONDS,
        )

    def follow(self, kind: str, raw: dict[str, Any]) -> None:
        """A job as watched, or as listed again after the watch expired (ADDED)."""
        target = self.targets.get((raw.get("metadata") or {}).get("uid", ""))
        if target is None:
            return
        if kind == "DELETED":
            self.finish(target, GONE)
            return
        try:
            job = Job.model_validate(lean(raw))
        except ValidationError as error:  # not the operator's writing: it never records it
            log.debug("%s: not read as a job: %s", target.key, error)
            return
        self.observe(target, job)

    def listed(self, present: set[str]) -> None:
        """Every job was listed again (the watch expired): those not listed were deleted."""
        for uid, target in self.targets.items():
            if uid not in present:
                self.finish(target, GONE)

    def watch_failed(self, error: Exception) -> None:
        """A refusal (401, 403: exit status 5) or another answer a retry will not change
        ends the run; a broken connection or an odd answer is retried."""
        if isinstance(error, ApiException) and not transient(error):
            raise denied(error) or error from None
        log.debug("the watch of jobs failed (%s); watching again", error)


# --- the command ---------------------------------------------------------------------------


@dataclass(frozen=True)
class Options:
    """A bulk reschedule as the command line asks for it."""

    selection: Selection
    token: str
    token_given: bool
    force: bool
    dry_run: bool
    yes: bool
    max_in_flight: int
    timeout: float
    output: str


def confirm_force(targets: Sequence[Target], options: Options, stdin: TextIO, err: TextIO) -> None:
    """A forced run re-runs finished jobs: ask first, on a terminal (or --yes)."""
    to_write = [t for t in targets if not t.written]
    if options.yes or not to_write:
        return
    if not stdin.isatty():
        raise CliError(
            "a forced reschedule of a selection asks for confirmation on a terminal; "
            "pass --yes to go ahead without one",
            EXIT_USAGE,
        )
    finished = sum(t.job.status.terminal for t in to_write)
    err.write(
        f"Force a reschedule of {len(to_write)} jobs ({finished} completed, cancelled or "
        "failed: they run again)? [y/N] "
    )
    err.flush()
    if stdin.readline().strip().lower() not in ("y", "yes"):
        raise CliError("not confirmed; nothing was written", EXIT_NOT_FOUND)


def add_arguments(reschedule: argparse.ArgumentParser) -> None:
    """The selection flags of `job-operator reschedule` (and `kubectl reschedule`)."""
    selection = reschedule.add_argument_group(
        "a selection instead of a NAME (the jobs matching all that is given)"
    )
    selection.add_argument(
        "-l", "--selector", metavar="LABELS", help="label selector, as kubectl's"
    )
    selection.add_argument(
        "--state",
        action="append",
        type=state_argument,
        metavar="STATE",
        help=f"jobs in this state (repeatable, or comma-separated): {', '.join(JOB_STATES)}",
    )
    selection.add_argument("--type", dest="job_type", metavar="TYPE", help="jobs of spec.type TYPE")
    selection.add_argument(
        "-A", "--all-namespaces", action="store_true", help="select in every namespace"
    )
    selection.add_argument(
        "--all",
        dest="select_all",
        action="store_true",
        help="every job in scope, when no -l, --state or --type narrows it",
    )
    run = reschedule.add_argument_group("a selection's run")
    run.add_argument(
        "--dry-run",
        action="store_true",
        help="show what the operator would do with each job; write nothing",
    )
    run.add_argument(
        "--max-in-flight",
        type=positive_int,
        default=None,
        metavar="N",
        help=f"requests waiting for the operator at once (default {DEFAULT_MAX_IN_FLIGHT})",
    )
    run.add_argument(
        "-y", "--yes", action="store_true", help="do not ask before a forced run of a selection"
    )


def state_argument(text: str) -> frozenset[str]:
    try:
        return parse_states([text])
    except ValueError as error:
        raise argparse.ArgumentTypeError(str(error)) from None


def options_from(args: argparse.Namespace, namespace: str) -> Options | None:
    """The bulk reschedule `args` ask for; None for one named job. CliError (usage) when
    the arguments do not go together."""
    selection = Selection(
        namespace=None if args.all_namespaces else namespace,
        label_selector=args.selector or "",
        states=frozenset().union(*(args.state or ())),
        job_type=args.job_type,
    )
    bulk_only = [
        flag
        for flag, given in (("--dry-run", args.dry_run), ("--max-in-flight", args.max_in_flight))
        if given
    ]
    if args.no_wait and args.name is None:
        bulk_only_problem = "--no-wait goes with a job NAME: a selection's run waits, to keep "
        raise CliError(bulk_only_problem + "at most --max-in-flight requests waiting", EXIT_USAGE)
    if args.all_namespaces and args.namespace:
        raise CliError("give -n NAMESPACE or -A, not both", EXIT_USAGE)
    problem = usage_problem(
        name=args.name,
        selection=selection,
        all_namespaces=args.all_namespaces,
        select_all=args.select_all,
        bulk_only=bulk_only,
        output=args.output,
        token=args.token,
    )
    if problem is not None:
        raise CliError(problem, EXIT_USAGE)
    if args.name is not None:
        return None
    return Options(
        selection=selection,
        token=args.token or new_token(),
        token_given=args.token is not None,
        force=args.force,
        dry_run=args.dry_run,
        yes=args.yes,
        max_in_flight=args.max_in_flight or DEFAULT_MAX_IN_FLIGHT,
        timeout=DEFAULT_TIMEOUT if args.timeout is None else args.timeout,
        output=args.output,
    )


async def reschedule(kube: Kube, options: Options) -> int:
    """`job-operator reschedule` with a selection: dry run, or a run, and its summary."""
    jobs, resource_version = await select(
        kube, options.selection, options.token if options.token_given else None
    )
    report = Report(options.output, len(jobs), sys.stdout, sys.stderr)
    if options.dry_run:
        clusters = await clusters_of(kube, options.selection.namespace)
        now = datetime.now(UTC)
        report.header(options.token, len(jobs), options.force, dry_run=True)
        predictions = [
            predict(job, clusters[job_key(job)], options.token, options.force, now) for job in jobs
        ]
        for job, prediction in zip(jobs, predictions, strict=True):
            report.predicted(job, prediction)
        counts = Counter(p.outcome for p in predictions)
        report.line(
            {"summary": {"selected": len(jobs), "outcomes": dict(counts), "dry_run": True}},
            f"{len(jobs)} jobs would be: "
            + (", ".join(f"{n} {outcome}" for outcome, n in counts.items()) or "none"),
        )
        return 0
    run = Run(
        kube,
        options.selection.namespace,
        options.token,
        options.force,
        options.max_in_flight,
        report,
    )
    report.header(options.token, len(jobs), options.force, dry_run=False)
    targets = [run.add(job) for job in jobs]
    if options.force:
        confirm_force(targets, options, sys.stdin, sys.stderr)
    interrupted = True
    try:
        with report:
            await run.execute(resource_version, options.timeout)
        interrupted = False
    finally:  # interrupted too (Ctrl-C): say what was done, and how to resume
        summary = summarize(options.token, targets, run.peak_in_flight, interrupted)
        report.summary(summary)
    return exit_status(summary)
