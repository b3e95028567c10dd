"""`python -m bench.run [--quick]`: the job-operator benchmark, in one run.

Starts a control plane (etcd + API server on loopback), installs the CRDs, starts the
operator and the executor simulator as a user would, and measures: the raw status-PATCH
ceiling, reschedule storms, steady open-loop rates, the API cost per cycle, the
operator's memory and its start-up with the jobs present. Writes the results as markdown
(and JSON) under bench/results/ and prints them. See docs/performance.md.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import logging
import os
import subprocess
import sys
import tempfile
import time
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import asdict
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report, scenarios
from bench.harness import Bench, Cluster, Plan, dump

log = logging.getLogger("bench")
RESULTS = Path(__file__).resolve().parent / "results"

Progress = Callable[[str], None]


def _say(message: str) -> None:
    log.info(message)


async def run_all(
    cluster: Cluster, plan: Plan, workdir: Path, progress: Progress = _say
) -> dict[str, Any]:
    """Every measurement of the plan against `cluster`; the results as a dict."""
    started = time.monotonic()
    results: dict[str, Any] = {"populations": [], "storms": [], "steady": []}
    async with Bench(cluster, plan, workdir) as bench:
        progress(f"ceiling: {plan.ceiling_seconds:g} s of status PATCHes")
        results["ceiling"] = await scenarios.measure_ceiling(
            bench, plan.ceiling_seconds, plan.ceiling_objects
        )
        progress(f"ceiling: {results['ceiling']['rate']:,.0f} PATCH/s")

        if plan.cost_jobs:
            progress(f"redispatch cost: {plan.cost_jobs} jobs at {plan.cost_rate:g}/s")
            results["redispatch_cost"] = await scenarios.redispatch_cost(
                bench, plan.cost_jobs, plan.cost_rate
            )
            api = results["redispatch_cost"].get("api") or {}
            progress(f"redispatch cost: {api.get('operator_writes_per_cycle')} writes/cycle")

        results["startups"] = []
        for size in plan.storm_sizes:
            progress(f"population: {size:,} running jobs (made with the operator stopped)")
            made = await scenarios.fabricate_population(bench, size)
            results["populations"].append(made)
            if made:
                progress(f"population: +{made['created']:,} in {made['seconds']:.1f} s")
            progress(f"start-up: the operator with {size:,} jobs present")
            boot = await scenarios.startup(bench, size)
            results["startups"].append(boot)
            progress(
                f"start-up: ready {report.num(boot['ready_seconds'])} s, first handled "
                f"{report.num(boot['first_handled_seconds'])} s, all "
                f"{report.num(boot['all_handled_seconds'])} s, settled "
                f"{report.num(boot['settled_seconds'])} s"
            )
            progress(f"storm: {size:,} requests")
            result = await scenarios.storm(bench, size)
            results["storms"].append(result)
            progress(
                f"storm {size:,}: {result['recorded']:,}/{result['requests']:,} recorded, "
                f"{result['throughput'] or 0:,.1f}/s, p99 {report.ms(result['latency']['p99'])}"
            )

        keys: Any = scenarios.idle_keys(bench, plan.namespace)
        saturated = False
        for rate in plan.rates:
            seconds = plan.rate_seconds
            if saturated:
                seconds = min(seconds, max(2.0, plan.saturated_step_requests / rate))
            progress(f"steady: {rate:g}/s for {seconds:g} s")
            result = await scenarios.steady(bench, rate, seconds, keys)
            result["saturated"] = (result["throughput"] or 0.0) < 0.8 * result["offered_rate"]
            saturated = saturated or result["saturated"]
            results["steady"].append(result)
            progress(
                f"steady {rate:g}/s: {result['recorded']}/{result['requests']} recorded, "
                f"p50 {report.ms(result['latency']['p50'])}, "
                f"p99 {report.ms(result['latency']['p99'])}"
            )

        if cluster.caller_token:
            from bench import api as http_api

            rates = (
                plan.api_rates if plan.api_rates is not None else [r for r in plan.rates if r <= 50]
            )
            results["api"] = await http_api.measure(bench, cluster.caller_token, rates, progress)

        if plan.ceiling_recheck:
            progress("ceiling again, with the jobs present")
            results["ceiling_recheck"] = await scenarios.measure_ceiling(
                bench, plan.ceiling_seconds, plan.ceiling_objects
            )

        results["memory_end_kib"] = bench.operator_memory()
        results["population"] = plan.population
        results["tracker_events"] = bench.jobs.events_seen
    results["seconds"] = time.monotonic() - started
    results["targets"] = report.targets(results)
    return results


def quick_plan() -> Plan:
    return Plan(
        storm_sizes=[100, 300],
        rates=[10, 50],
        rate_seconds=3.0,
        ceiling_seconds=3.0,
        ceiling_objects=64,
        cost_jobs=30,
        cost_rate=20.0,
    )


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.run", description=__doc__.split("\n")[0])
    p.add_argument("--quick", action="store_true", help="small N, short steps (a minute or two)")
    p.add_argument("--storm-sizes", help="comma-separated job counts (default 1000,10000)")
    p.add_argument("--rates", help="comma-separated requests/s (default 10,25,50,100,200)")
    p.add_argument("--rate-seconds", type=float, help="seconds per steady rate (default 20)")
    p.add_argument("--ceiling-seconds", type=float, help="seconds of ceiling PATCHes")
    p.add_argument("--cost-jobs", type=int, help="jobs in the redispatch-cost batch")
    p.add_argument("--connections", type=int, help="client connections (default 32)")
    p.add_argument(
        "--operator-arg",
        action="append",
        default=[],
        help="extra `job-operator run` argument (repeatable), e.g. --operator-arg=--batch-window=0",
    )
    p.add_argument("--profile", action="store_true", help="py-spy the operator during the storms")
    p.add_argument(
        "--wait-quiet",
        type=float,
        default=0.0,
        metavar="S",
        help="first wait up to S seconds for the machine to be idle (load average < 1)",
    )
    p.add_argument(
        "--source-rev",
        metavar="REV",
        help="run the operator and simulator from this git revision's src/ (extracted into "
        "the run's work folder), so edits made meanwhile do not leak in; recorded by commit",
    )
    p.add_argument(
        "--source-tree",
        metavar="DIR",
        help="run the operator and simulator from this src/ folder (e.g. a snapshot made "
        "with `git archive HEAD src | tar -x -C DIR`), not the installed package",
    )
    p.add_argument("--kubeconfig", help="use this cluster instead of starting a control plane")
    p.add_argument("--kubectl", default="kubectl", help="kubectl for --kubeconfig")
    p.add_argument("--output", type=Path, default=RESULTS, help="folder for the results")
    p.add_argument("--no-write", action="store_true", help="print only; write no results file")
    p.add_argument("--tag", default="", help="suffix of the results file name")
    p.add_argument(
        "--render",
        type=Path,
        metavar="JSON",
        help="only render the markdown of an earlier run's results JSON again (beside it)",
    )
    return p.parse_args(argv)


def plan_from(args: argparse.Namespace) -> Plan:
    plan = quick_plan() if args.quick else Plan()
    if args.storm_sizes:
        plan.storm_sizes = [int(x) for x in args.storm_sizes.split(",") if x]
    if args.rates:
        plan.rates = [float(x) for x in args.rates.split(",") if x]
    if args.rate_seconds is not None:
        plan.rate_seconds = args.rate_seconds
    if args.ceiling_seconds is not None:
        plan.ceiling_seconds = args.ceiling_seconds
    if args.cost_jobs is not None:
        plan.cost_jobs = args.cost_jobs
    if args.connections is not None:
        plan.connections = args.connections
    plan.operator_args = list(args.operator_arg)
    plan.profile = args.profile
    if args.source_tree:
        plan.source_tree = str(Path(args.source_tree).resolve())
    return plan


def wait_quiet(seconds: float) -> float:
    """Wait until the 1-minute load average is below 1 (at most `seconds`); the load then."""
    deadline = time.monotonic() + seconds
    while True:
        load = os.getloadavg()[0]
        if load < 1.0 or time.monotonic() >= deadline:
            return load
        log.info("waiting for a quiet machine: load average %.2f", load)
        time.sleep(15)


def server_pids(data_dir: Path | None) -> dict[str, int]:
    """The control plane's process ids, from the state file it keeps."""
    if data_dir is None:
        return {}
    try:
        state = json.loads((data_dir / "state.json").read_text())
        return {name: int(info["pid"]) for name, info in state["processes"].items()}
    except (OSError, ValueError, KeyError, TypeError):
        return {}


Measure = Callable[[Cluster, Plan, Path], Awaitable[dict[str, Any]]]


async def run_with_cluster(
    args: argparse.Namespace, plan: Plan, workdir: Path, measure: Measure | None = None
) -> tuple[dict[str, Any], dict[str, str]]:
    """`measure` (by default every measurement, `run_all`) against `--kubeconfig`'s
    cluster, or a control plane started for it; its results, and the servers' versions."""
    measure = measure or run_all
    if args.kubeconfig:
        cluster = Cluster(Path(args.kubeconfig), args.kubectl)
        return await measure(cluster, plan, workdir), {}
    from testenv.build import ensure_built
    from testenv.controlplane import ControlPlane

    toolchain = ensure_built()
    control_plane = ControlPlane(toolchain, audit=False)
    await asyncio.to_thread(control_plane.start)
    try:
        caller = await asyncio.to_thread(
            control_plane.add_user, "bench-api-caller", ("system:masters",)
        )
        cluster = Cluster(
            control_plane.kubeconfig,
            str(control_plane.kubectl),
            server_pids(control_plane.data_dir),
            caller_token=caller.token,
        )
        extra = {
            "kubernetes (apiextensions-apiserver)": await _server_version(cluster),
            "etcd": report.etcd_version(getattr(toolchain, "etcd", None)),
        }
        return await measure(cluster, plan, workdir), extra
    finally:
        await asyncio.to_thread(control_plane.stop)


async def _server_version(cluster: Cluster) -> str:
    from bench.client import Api

    async with await Api.connect(cluster.kubeconfig, 1) as api:
        info = await api.request("GET", "/version")
    return f"{info.get('major')}.{info.get('minor')}"


REPO = Path(__file__).resolve().parents[1]


def extract_revision(rev: str, workdir: Path) -> tuple[str, str]:
    """`rev`'s src/ extracted under `workdir`: (the folder, the short commit)."""
    commit = subprocess.run(
        ["git", "rev-parse", "--short", rev], cwd=REPO, capture_output=True, text=True, check=True
    ).stdout.strip()
    target = workdir / f"src-{commit}"
    target.mkdir()
    archive = subprocess.run(
        ["git", "archive", commit, "src"], cwd=REPO, capture_output=True, check=True
    ).stdout
    subprocess.run(["tar", "-x", "-C", str(target)], input=archive, check=True)
    return str(target / "src"), commit


def source_version(tree: str | None = None) -> str:
    """The commit the operator under test was run from, and whether src/ had changes."""
    if tree:
        return f"the source folder {tree}"
    repo = REPO
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "--short", "HEAD"], cwd=repo, capture_output=True, text=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--", "src"], cwd=repo, capture_output=True, text=True
        ).stdout.strip()
    except OSError:
        return "?"
    return f"{commit or '?'}{' + uncommitted changes in src/' if dirty else ''}"


def render_again(path: Path) -> int:
    """Re-render a results JSON's markdown (after a change to bench/report.py)."""
    results = json.loads(path.read_text())
    results["targets"] = report.targets(results)
    text = report.render(results)
    path.with_suffix(".md").write_text(text)
    if path.resolve().parent == RESULTS.resolve() and not path.stem.endswith("-quick"):
        (RESULTS / "latest.md").write_text(text)
    print(text)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    if args.render:
        return render_again(args.render)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr
    )
    plan = plan_from(args)
    load = wait_quiet(args.wait_quiet) if args.wait_quiet else os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="job-operator-bench-"))
    log.info("logs of the operator and simulator in %s", workdir)
    now = datetime.now(UTC)
    if args.source_rev:
        plan.source_tree, commit = extract_revision(args.source_rev, workdir)
        source = f"commit {commit} (its src/ extracted, run from there)"
    else:
        source = source_version(plan.source_tree)
    results, extra = asyncio.run(run_with_cluster(args, plan, workdir))
    results["meta"] = {
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": report.machine(),
        "versions": report.versions(extra),
        "plan": asdict(plan),
        "total_seconds": results["seconds"],
        "workdir": str(workdir),
        "load_average_at_start": load,
        "source": source,
    }
    text = report.render(results)
    print(text)
    if not args.no_write:
        args.output.mkdir(parents=True, exist_ok=True)
        host = results["meta"]["machine"]["host"]
        stem = f"{now.strftime('%Y-%m-%d')}-{host}{'-' + args.tag if args.tag else ''}"
        if args.quick:
            stem += "-quick"
        paths = [args.output / f"{stem}.md"]
        if not args.quick:
            paths.append(args.output / "latest.md")
        for path in paths:
            path.write_text(text)
        (args.output / f"{stem}.json").write_text(dump(results) + "\n")
        log.info("results in %s", args.output / f"{stem}.md")
    return 0


if __name__ == "__main__":
    sys.exit(main())
