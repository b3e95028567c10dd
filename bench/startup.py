"""`python -m bench.startup --revs A,B`: the operator's start-up, one revision against another.

With a population of running jobs present (made once, with the operator stopped), the
operator of each revision (its src/ extracted, as `bench.run --source-rev`) is restarted
in turn, `--rounds` times, interleaved, so a machine's changing load falls on all alike.
Each start-up is `scenarios.startup`: two requests written while the operator is down,
on the first and the last job in list order; seconds from its spawn to /readyz, to the
first request handled, to both, and to its CPU settling. Writes markdown and JSON under
bench/results/ and prints them.
"""

from __future__ import annotations

import argparse
import asyncio
import logging
import os
import statistics
import sys
import tempfile
from collections.abc import Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from bench import report, scenarios
from bench.harness import Bench, Cluster, Plan, dump
from bench.run import RESULTS, extract_revision, run_with_cluster, wait_quiet

log = logging.getLogger("bench")
FIGURES = (
    ("ready_seconds", "/readyz"),
    ("first_handled_seconds", "first request handled"),
    ("all_handled_seconds", "both handled"),
    ("settled_seconds", "CPU settled"),
)


async def compare(
    cluster: Cluster, plan: Plan, workdir: Path, trees: dict[str, str], rounds: int, size: int
) -> dict[str, Any]:
    """Start-ups of the operator from each of `trees` (revision -> src/), interleaved."""
    runs: list[dict[str, Any]] = []
    async with Bench(cluster, plan, workdir) as bench:
        log.info("population: %s running jobs", f"{size:,}")
        await scenarios.fabricate_population(bench, size)
        environment = dict(bench.operator.env)
        for round_ in range(rounds):
            for revision, tree in trees.items():
                bench.operator.env = {**environment, "PYTHONPATH": tree}
                result = await scenarios.startup(bench, size)
                log.info("round %d, %s: %s", round_ + 1, revision, result)
                runs.append({"round": round_ + 1, "revision": revision, **result})
    return {"population": size, "runs": runs}


def render(results: dict[str, Any]) -> str:
    """The runs as a table, and each revision's medians."""
    meta = results["meta"]
    out = [
        f"# Operator start-up with {results['population']:,} jobs, revision against revision",
        "",
        f"{meta['date']}, {meta['machine']['host']}, load average at start "
        f"{meta['load_average_at_start']:.2f}; `python -m bench.startup {meta['argv']}`. "
        "Two requests are written while the operator is down (on the first and the last "
        "job in list order); seconds from its spawn. Runs interleaved, round by round.",
        "",
    ]
    header = ["round", "revision", *(label for _, label in FIGURES)]
    rows = [
        [str(run["round"]), run["revision"], *(report.num(run[key]) for key, _ in FIGURES)]
        for run in results["runs"]
    ]
    out += report.table(header, rows)
    out += ["Medians:", ""]
    medians = []
    for revision in dict.fromkeys(run["revision"] for run in results["runs"]):
        mine = [run for run in results["runs"] if run["revision"] == revision]
        cells = []
        for key, _ in FIGURES:
            values = [run[key] for run in mine if run[key] is not None]
            cells.append(report.num(statistics.median(values)) if values else "-")
        medians.append([revision, *cells])
    out += report.table(["revision", *(label for _, label in FIGURES)], medians)
    return "\n".join(out)


def parse_args(argv: Sequence[str] | None) -> argparse.Namespace:
    p = argparse.ArgumentParser(prog="python -m bench.startup", description=__doc__.split("\n")[0])
    p.add_argument("--revs", required=True, help="comma-separated git revisions, e.g. d3427be,HEAD")
    p.add_argument("--size", type=int, default=10000, help="jobs present (default 10000)")
    p.add_argument("--rounds", type=int, default=2, help="start-ups of each revision (default 2)")
    p.add_argument("--wait-quiet", type=float, default=0.0, metavar="S", help="as bench.run's")
    p.add_argument("--kubeconfig", help="use this cluster instead of starting a control plane")
    p.add_argument("--kubectl", default="kubectl", help="kubectl for --kubeconfig")
    p.add_argument("--output", type=Path, default=RESULTS, help="folder for the results")
    p.add_argument("--tag", default="startup", help="suffix of the results file name")
    return p.parse_args(argv)


def main(argv: Sequence[str] | None = None) -> int:
    args = parse_args(argv)
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(name)s: %(message)s", stream=sys.stderr
    )
    load = wait_quiet(args.wait_quiet) if args.wait_quiet else os.getloadavg()[0]
    workdir = Path(tempfile.mkdtemp(prefix="job-operator-startup-"))
    trees: dict[str, str] = {}
    for rev in args.revs.split(","):
        tree, commit = extract_revision(rev, workdir)
        trees[commit] = tree
    plan = Plan(storm_sizes=[args.size])
    now = datetime.now(UTC)

    async def measure(cluster: Cluster, plan: Plan, workdir: Path) -> dict[str, Any]:
        return await compare(cluster, plan, workdir, trees, args.rounds, args.size)

    results, _ = asyncio.run(run_with_cluster(args, plan, workdir, measure))
    results["meta"] = {
        "date": now.strftime("%Y-%m-%d %H:%M UTC"),
        "machine": report.machine(),
        "load_average_at_start": load,
        "argv": " ".join(sys.argv[1:] if argv is None else argv),
    }
    text = render(results)
    print(text)
    args.output.mkdir(parents=True, exist_ok=True)
    stem = f"{now.strftime('%Y-%m-%d')}-{results['meta']['machine']['host']}-{args.tag}"
    (args.output / f"{stem}.md").write_text(text + "\n")
    (args.output / f"{stem}.json").write_text(dump(results) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
