"""`job-operator api`: serve the HTTP API (uvicorn), TLS unless on loopback or told."""

from __future__ import annotations

import argparse
import ipaddress
import logging
import sys

from job_operator.cli_support import run_loop

log = logging.getLogger(__name__)
KEEP_ALIVE_SECONDS = 75


class ServeError(Exception):
    """A refusal to start, with the reason."""


def add_arguments(parser: argparse.ArgumentParser) -> None:
    parser.add_argument(
        "-n",
        "--namespace",
        action="append",
        help="serve Jobs of this namespace only (repeatable; default: all namespaces)",
    )
    parser.add_argument("--address", default="127.0.0.1", help="address to listen on")
    parser.add_argument("--port", type=int, default=8443, help="port to listen on")
    parser.add_argument("--tls-cert-file", help="serving certificate (PEM)")
    parser.add_argument("--tls-key-file", help="its private key (PEM)")
    parser.add_argument(
        "--insecure-http",
        action="store_true",
        help="allow plain HTTP on a non-loopback address (behind a TLS-terminating proxy)",
    )
    parser.add_argument(
        "--max-waiting",
        type=int,
        default=1000,
        help="requests waiting for the operator at once, at most; past it, 429",
    )
    parser.add_argument(
        "--max-timeout",
        type=float,
        default=300.0,
        help="the longest ?timeoutSeconds= honoured, seconds",
    )
    parser.add_argument(
        "--access-log", action="store_true", help="log each request (method, path, status)"
    )


def check_transport(address: str, cert: str | None, key: str | None, insecure: bool) -> bool:
    """True to serve TLS. Plain HTTP only on loopback, or when explicitly allowed:
    bearer tokens must not cross a network in the clear."""
    if bool(cert) != bool(key):
        raise ServeError("--tls-cert-file and --tls-key-file go together")
    if cert:
        return True
    if not (is_loopback(address) or insecure):
        raise ServeError(
            f"refusing to serve plain HTTP on {address}: bearer tokens would cross the network "
            "in the clear; give --tls-cert-file and --tls-key-file (or --insecure-http behind "
            "a proxy that terminates TLS)"
        )
    return False


def is_loopback(address: str) -> bool:
    if address == "localhost":
        return True
    try:
        return ipaddress.ip_address(address).is_loopback
    except ValueError:
        return False


async def serve(args: argparse.Namespace) -> None:
    # Imported here, not above: every `job-operator` command builds this parser.
    import uvicorn

    from job_operator.api.app import Settings, create_app
    from job_operator.api.passthrough import CallerClient
    from job_operator.api.waiting import JobIndex
    from job_operator.kube import Kube

    tls = check_transport(args.address, args.tls_cert_file, args.tls_key_file, args.insecure_http)
    async with Kube.connect(args.kubeconfig) as kube:
        caller = await CallerClient.connect(args.kubeconfig)
        try:
            index = JobIndex(kube, args.namespace or (), max_waiting=args.max_waiting)
            app = create_app(
                caller,
                kube,
                index,
                Settings(max_timeout_seconds=args.max_timeout),
                background=index.run,
            )
            config = uvicorn.Config(
                app,
                host=args.address,
                port=args.port,
                ssl_certfile=args.tls_cert_file if tls else None,
                ssl_keyfile=args.tls_key_file if tls else None,
                access_log=args.access_log,
                log_config=None,  # the process's logging, as configured by the CLI
                timeout_graceful_shutdown=30,
                # Longer than clients keep idle connections (aiohttp 15 s, Go 90 s is the
                # exception): a client reusing one the server just closed sees it fail.
                timeout_keep_alive=KEEP_ALIVE_SECONDS,
            )
            log.info(
                "serving the job-operator API on %s://%s:%d",
                "https" if tls else "http",
                args.address,
                args.port,
            )
            await uvicorn.Server(config).serve()
        finally:
            await caller.close()


def main(args: argparse.Namespace) -> int:
    try:
        run_loop(serve(args))
    except ServeError as error:
        print(f"job-operator api: {error}", file=sys.stderr)
        return 2
    return 0
