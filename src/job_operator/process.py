"""The `job-operator run` process: health and metrics endpoints, leader election, kopf."""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import signal
import socket
import threading

import prometheus_client
from aiohttp import web

from job_operator import metrics
from job_operator.cli_support import lease_namespace, run_loop
from job_operator.controller import OperatorConfig
from job_operator.kube import Kube
from job_operator.leader import LeaderElector, LeaseConfig
from job_operator.operator import run_operator

log = logging.getLogger(__name__)


class Health:
    """What /healthz and /readyz report."""

    def __init__(self) -> None:
        self.role = "starting"
        self.operator_ready = threading.Event()  # set by kopf, in its own thread


async def start_endpoints(address: str, port: int, health: Health) -> web.AppRunner | None:
    """Serve /metrics (Prometheus), /healthz (liveness) and /readyz (readiness)."""
    if port == 0:
        return None

    async def metrics(_: web.Request) -> web.Response:
        return web.Response(
            body=prometheus_client.generate_latest(),
            headers={"Content-Type": prometheus_client.CONTENT_TYPE_LATEST},
        )

    async def healthz(_: web.Request) -> web.Response:
        return web.Response(text=f"ok ({health.role})\n")

    async def readyz(_: web.Request) -> web.Response:
        ready = health.role == "standby" or health.operator_ready.is_set()
        return web.Response(text=f"{health.role}\n", status=200 if ready else 503)

    app = web.Application()
    app.add_routes(
        [web.get("/metrics", metrics), web.get("/healthz", healthz), web.get("/readyz", readyz)]
    )
    runner = web.AppRunner(app, access_log=None)
    await runner.setup()
    await web.TCPSite(runner, address, port).start()
    log.info("serving /metrics, /healthz and /readyz on %s:%d", address, port)
    return runner


async def serve(config: OperatorConfig, args: argparse.Namespace) -> int:
    loop = asyncio.get_running_loop()
    stop = asyncio.Event()
    for sig in (signal.SIGTERM, signal.SIGINT):
        loop.add_signal_handler(sig, stop.set)
    health = Health()
    runner = await start_endpoints(args.metrics_address, args.metrics_port, health)
    try:
        if not args.leader_elect:
            health.role = "leader"
            await run_kopf_in_thread(config, health, stop)
            return 0
        async with Kube.connect(config.kubeconfig) as kube:
            lease = LeaseConfig(
                namespace=args.lease_namespace or lease_namespace(),
                name=args.lease_name,
                identity=args.identity or f"{socket.gethostname()}-{os.getpid()}",
                duration=args.lease_duration,
            )
            elector = LeaderElector(kube, lease)
            health.role = "standby"
            if not await elector.acquire(stop):
                return 0
            health.role = "leader"
            stepped_down = asyncio.Event()
            keeper = asyncio.create_task(elector.keep(stepped_down))
            try:
                await run_kopf_in_thread(config, health, stop, stepped_down)
            finally:
                stepped_down.set()
                await keeper
            if elector.lost:
                log.error("lost leadership; exiting so that only one replica acts")
                return 1
            await elector.release()
            return 0
    finally:
        if runner is not None:
            await runner.cleanup()


class OperatorDied(Exception):
    """kopf ended without being asked to (it gives up on some API failures)."""


async def run_kopf_in_thread(
    config: OperatorConfig,
    health: Health,
    *stops: asyncio.Event,
) -> None:
    """Run the operator (kopf) in a thread and event loop of its own until a stop is set.

    kopf waits at shutdown for every task its loop has, and takes over signal
    handling in the main thread; in its own thread it does neither, so this
    process's endpoints and Lease keeper stay outside it, and a stop is quick.
    """
    operator_stop = threading.Event()

    async def relay() -> None:
        waiters = [asyncio.create_task(flag.wait()) for flag in stops]
        try:
            await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for waiter in waiters:
                waiter.cancel()
            operator_stop.set()

    relaying = asyncio.create_task(relay())
    kopf_errors = metrics.KopfErrors()
    logging.getLogger("kopf").addHandler(kopf_errors)
    try:
        await asyncio.to_thread(
            run_loop, run_operator(config, operator_stop, health.operator_ready)
        )
    finally:
        relaying.cancel()
        logging.getLogger("kopf").removeHandler(kopf_errors)
    if not operator_stop.is_set():
        raise OperatorDied("the operator stopped by itself")


def run_process(config: OperatorConfig, args: argparse.Namespace) -> int:
    return run_loop(serve(config, args))
