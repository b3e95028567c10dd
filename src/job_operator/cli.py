"""`job-operator`: run the operator, ask it for a reschedule or cancel, show a job.

The request commands work as `flux reconcile` does: write a fresh token into
the request annotation, then watch the job until the operator has recorded
that token as handled, and print the outcome in the seed API's shape.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import signal
import sys
from collections.abc import Sequence
from datetime import UTC, datetime, timedelta
from typing import Any, Final, NoReturn

import yaml
from kubernetes_asyncio import config as kube_config
from kubernetes_asyncio import watch
from kubernetes_asyncio.client.exceptions import ApiException
from pydantic import ValidationError

from job_operator import core, names, views
from job_operator.cli_support import lease_namespace
from job_operator.kube import Kube, NotFound
from job_operator.models import Job, unreadable

EXIT_NOT_FOUND = 1
EXIT_REFUSED = 3
EXIT_TIMEOUT = 4
EXIT_DENIED = 5
EXIT_UNREADABLE = 6
DEFAULT_TIMEOUT = 60.0
# The commands that read a Job for their user (and may meet one stored unreadably).
READS_A_JOB: Final = frozenset({"reschedule", "cancel", "get"})


class CliError(Exception):
    """A failure with a one-line reason and an exit status."""

    def __init__(self, message: str, code: int = 1) -> None:
        super().__init__(message)
        self.code = code


def denied(error: BaseException) -> CliError | None:
    """The API server's 401 or 403 as one line; None for any other error. A 403's message
    names the user, the verb and the resource (as the server's authorizer wrote it)."""
    if not isinstance(error, ApiException) or error.status not in (401, 403):
        return None
    try:
        message = " ".join(str(json.loads(error.body or b"")["message"]).split())
    except (TypeError, ValueError, KeyError):
        message = str(error.reason)
    if error.status == 401:
        return CliError(
            f"unauthorized: the API server did not accept the kubeconfig's credentials ({message})",
            EXIT_DENIED,
        )
    return CliError(f"forbidden: {message.partition(' is forbidden: ')[2] or message}", EXIT_DENIED)


def new_token() -> str:
    """A fresh request token: the time, to the nanosecond (as Flux's requestedAt)."""
    now = datetime.now(UTC)
    return now.strftime("%Y-%m-%dT%H:%M:%S.") + f"{now.microsecond:06d}{os.getpid() % 1000:03d}Z"


def default_namespace(kubeconfig: str | None) -> str:
    """The kubeconfig context's namespace; in a pod without a kubeconfig, the pod's."""
    if os.environ.get("KUBERNETES_SERVICE_HOST") and not (
        kubeconfig or os.environ.get("KUBECONFIG")
    ):
        return lease_namespace()
    try:
        _, active = kube_config.list_kube_config_contexts(config_file=kubeconfig)
    except Exception:
        return "default"
    namespace: str = (active or {}).get("context", {}).get("namespace") or "default"
    return namespace


def emit(result: dict[str, Any], output: str) -> None:
    if output == "json":
        print(json.dumps(result, indent=2))
    elif output == "yaml":
        print(yaml.safe_dump(result, sort_keys=False), end="")
    else:
        print(views.as_text(result))


# --- request commands -------------------------------------------------------------------


async def request(args: argparse.Namespace, annotation: str) -> int:
    """Write a request token, wait until the operator handled it, print the result."""
    namespace = args.namespace or default_namespace(args.kubeconfig)
    if annotation == names.RESCHEDULE_ANNOTATION:
        from job_operator import bulk

        options = bulk.options_from(args, namespace)
        if options is not None:
            async with Kube.connect(args.kubeconfig) as kube:
                return await bulk.reschedule(kube, options)
    token = getattr(args, "token", None) or new_token()
    annotations = {annotation: token}
    if getattr(args, "force", False):
        annotations[names.RESCHEDULE_FORCE_ANNOTATION] = token
    async with Kube.connect(args.kubeconfig) as kube:
        try:
            job = await kube.annotate_job(
                namespace, args.name, annotations, names.CLI_FIELD_MANAGER
            )
        except NotFound:
            raise CliError(f"job {namespace}/{args.name} not found", EXIT_NOT_FOUND) from None
        if args.no_wait:
            emit(
                {"request": token, "annotation": annotation, "job": f"{namespace}/{args.name}"},
                args.output,
            )
            return 0
        job = await wait_handled(
            kube, job, annotation, token, DEFAULT_TIMEOUT if args.timeout is None else args.timeout
        )
    record = (
        job.status.reschedule if annotation == names.RESCHEDULE_ANNOTATION else job.status.cancel
    )
    assert record is not None
    emit(views.seed_result(record.outcome, job), args.output)
    return 0


def handled(job: Job, annotation: str, token: str) -> bool:
    """True once the operator has recorded `token`; CliError if it refused it."""
    digest = core.token_digest(token)
    for rejected in job.status.rejected_requests:
        if rejected.annotation == annotation and rejected.token_digest == digest:
            raise CliError(f"request refused: {rejected.message}", EXIT_REFUSED)
    record = (
        job.status.reschedule if annotation == names.RESCHEDULE_ANNOTATION else job.status.cancel
    )
    return record is not None and record.request == token


async def wait_handled(kube: Kube, job: Job, annotation: str, token: str, timeout: float) -> Job:
    """Watch the job until `token` is handled, or raise CliError at the deadline."""
    name, namespace = job.metadata.name, job.metadata.namespace or ""
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout
    resource_version = job.metadata.resource_version
    while not handled(job, annotation, token):
        remaining = deadline - loop.time()
        if remaining <= 0:
            raise CliError(
                f"timed out after {timeout:g}s waiting for the operator to handle "
                f"{annotation}={token} on {namespace}/{name} (is the operator running?)",
                EXIT_TIMEOUT,
            )
        stream = watch.Watch()
        try:
            async with asyncio.timeout(remaining):
                async for event in stream.stream(
                    kube.custom.list_namespaced_custom_object,
                    names.GROUP,
                    names.VERSION,
                    namespace,
                    names.JOB_PLURAL,
                    field_selector=f"metadata.name={name}",
                    resource_version=resource_version,
                    timeout_seconds=max(int(remaining), 1),
                ):
                    if event["type"] == "DELETED":
                        raise CliError(f"job {namespace}/{name} was deleted", EXIT_NOT_FOUND)
                    if event["type"] in ("ADDED", "MODIFIED"):
                        job = Job.model_validate(event["object"])
                        resource_version = job.metadata.resource_version
                        if handled(job, annotation, token):
                            return job
        except TimeoutError:
            continue
        except Exception as error:  # a broken or expired watch: re-read, then watch again
            if isinstance(error, CliError) or denied(error):
                raise
            try:
                job = await kube.get_job(namespace, name)
            except NotFound:
                raise CliError(f"job {namespace}/{name} was deleted", EXIT_NOT_FOUND) from None
            resource_version = job.metadata.resource_version
        finally:
            stream.stop()
    return job


async def get(args: argparse.Namespace) -> int:
    namespace = args.namespace or default_namespace(args.kubeconfig)
    async with Kube.connect(args.kubeconfig) as kube:
        try:
            job = await kube.get_job(namespace, args.name)
        except NotFound:
            raise CliError(f"job {namespace}/{args.name} not found", EXIT_NOT_FOUND) from None
    emit(views.seed_job(job), args.output)
    return 0


# --- run -----------------------------------------------------------------------------


def run(args: argparse.Namespace) -> int:
    from job_operator.controller import OperatorConfig
    from job_operator.process import run_process

    if args.kubeconfig:
        os.environ["KUBECONFIG"] = args.kubeconfig  # for kopf's own login, too
    config = OperatorConfig(
        namespaces=[] if args.all_namespaces else list(args.namespace or []),
        policy=core.Policy(
            backoff_base=timedelta(seconds=args.backoff_base),
            backoff_cap=timedelta(seconds=args.backoff_cap),
        ),
        sweep_interval=args.sweep_interval,
        workers=args.workers,
        kubeconfig=args.kubeconfig,
    )
    return run_process(config, args)


# --- argument parsing ---------------------------------------------------------------


def positive_int(text: str) -> int:
    value = int(text)
    if value < 1:
        raise argparse.ArgumentTypeError(f"must be 1 or more, not {value}")
    return value


def parser() -> argparse.ArgumentParser:
    from job_operator import simulator

    top = argparse.ArgumentParser(
        prog="job-operator",
        description="Keeps data-plane jobs running; reschedules them on request.",
    )
    top.add_argument("--kubeconfig", help="kubeconfig file (default: $KUBECONFIG, in-cluster)")
    top.add_argument("-v", "--verbose", action="store_true", help="debug logging")
    commands = top.add_subparsers(dest="command", required=True, metavar="COMMAND")

    def common(p: argparse.ArgumentParser, *, wait: bool, selects: bool = False) -> None:
        p.add_argument(
            "name",
            metavar="NAME",
            nargs="?" if selects else None,
            help="the Job's name" + (" (or a selection: see below)" if selects else ""),
        )
        p.add_argument("-n", "--namespace", help="the Job's namespace (default: the context's)")
        p.add_argument(
            "-o", "--output", choices=("json", "yaml", "text"), default="text", help="output format"
        )
        p.add_argument("--kubeconfig", default=argparse.SUPPRESS, help=argparse.SUPPRESS)
        if wait:
            p.add_argument(
                "--no-wait",
                action="store_true",
                help="write the request and return without waiting",
            )
            p.add_argument(
                "--timeout",
                type=float,
                default=None,
                metavar="S",
                help="seconds to wait for the operator (default 60"
                + ("; for a selection, the whole run's, default 300)" if selects else ")"),
            )

    reschedule = commands.add_parser(
        "reschedule",
        help="put a job back on the queue (a fresh executor)",
        description="Request a reschedule and print its outcome: rescheduled, or "
        "skipped_terminal for a finished job unless --force.",
    )
    common(reschedule, wait=True, selects=True)
    reschedule.add_argument(
        "--force", action="store_true", help="reschedule even a completed, cancelled or failed job"
    )
    reschedule.add_argument(
        "--token", help="the request's token (default: a fresh one); a selection's run resumes"
    )
    from job_operator import bulk

    bulk.add_arguments(reschedule)
    common(commands.add_parser("cancel", help="cancel a job"), wait=True)
    common(commands.add_parser("get", help="show a job in the seed API's shape"), wait=False)

    operator = commands.add_parser("run", help="run the operator")
    scope = operator.add_mutually_exclusive_group()
    scope.add_argument(
        "-n", "--namespace", action="append", help="watch this namespace (repeatable)"
    )
    scope.add_argument(
        "-A", "--all-namespaces", action="store_true", help="watch all namespaces (the default)"
    )
    operator.add_argument(
        "--metrics-port",
        type=int,
        default=8080,
        help="port of /metrics, /healthz and /readyz (0: none)",
    )
    operator.add_argument(
        "--metrics-address", default="0.0.0.0", help="address of the metrics port"
    )
    operator.add_argument(
        "--backoff-base",
        type=float,
        default=1.0,
        help="seconds before the first redispatch after an executor loss",
    )
    operator.add_argument(
        "--backoff-cap", type=float, default=60.0, help="longest redispatch backoff, seconds"
    )
    operator.add_argument(
        "--sweep-interval",
        type=float,
        default=60.0,
        help="seconds between full checks for lost and dangling clusters",
    )
    operator.add_argument(
        "--workers",
        type=positive_int,
        default=100,
        help="jobs reconciled at once, at most (default 100)",
    )
    operator.add_argument(
        "--leader-elect",
        action=argparse.BooleanOptionalAction,
        default=True,
        help="take a Lease so one replica acts (default on)",
    )
    operator.add_argument(
        "--lease-namespace",
        default=None,
        help="namespace of the leader Lease (default: the pod's, or default)",
    )
    operator.add_argument("--lease-name", default=names.LEASE_NAME, help="name of the leader Lease")
    operator.add_argument(
        "--lease-duration",
        type=float,
        default=15.0,
        help="seconds a leader holds the Lease without renewing it; a standby takes over then",
    )
    operator.add_argument(
        "--identity", default=None, help="this replica's name in the Lease (default: hostname-pid)"
    )

    from job_operator.api import server as api_server

    api = commands.add_parser(
        "api",
        help="serve the HTTP API (reschedule with a bearer token)",
        description="Serve POST /v1/jobs/{job_id}/reschedule and friends; each write is made "
        "with the caller's bearer token (docs/api.md).",
    )
    api_server.add_arguments(api)

    simulate = commands.add_parser("simulate", help="run the executor simulator")
    simulator.add_arguments(simulate)
    return top


def main(argv: Sequence[str] | None = None) -> NoReturn:
    args = parser().parse_args(argv)
    logging.basicConfig(
        level=logging.DEBUG if args.verbose else logging.INFO,
        format="%(asctime)s %(levelname)s %(name)s: %(message)s",
    )
    if not args.verbose:  # kopf reports every handled event at INFO
        logging.getLogger("kopf.objects").setLevel(logging.WARNING)
    try:
        sys.exit(dispatch_command(args))
    except KeyboardInterrupt:
        sys.exit(130)
    except Exception as error:
        failed = failure(args.command, error)
        if failed is None:
            raise
        print(f"job-operator: {failed}", file=sys.stderr)
        sys.exit(failed.code)


def failure(command: str, error: Exception) -> CliError | None:
    """What `command` failing with `error` tells its user in a line, with its exit status;
    None for a bug, shown with its traceback. A job the models cannot read is the user's
    data only where a command reads a job for them: in `run`, `api` or `simulate` it is not."""
    if isinstance(error, CliError):
        return error
    if isinstance(error, ApiException):
        return denied(error)
    if isinstance(error, ValidationError) and command in READS_A_JOB:
        return CliError(unreadable(error), EXIT_UNREADABLE)
    return None


def dispatch_command(args: argparse.Namespace) -> int:
    if args.command == "reschedule":
        return asyncio.run(request(args, names.RESCHEDULE_ANNOTATION))
    if args.command == "cancel":
        return asyncio.run(request(args, names.CANCEL_ANNOTATION))
    if args.command == "get":
        return asyncio.run(get(args))
    if args.command == "run":
        return run(args)
    if args.command == "api":
        from job_operator.api import server as api_server

        return api_server.main(args)
    from job_operator import simulator

    signal.signal(signal.SIGTERM, signal.default_int_handler)
    return simulator.main(args)


def kubectl_plugin() -> NoReturn:
    """`kubectl reschedule NAME [--force] ...`: the reschedule command as a kubectl plugin."""
    main(["reschedule", *sys.argv[1:]])
