"""The results as markdown: the machine, the settings, the figures, the targets."""

from __future__ import annotations

import importlib.metadata
import os
import platform
import subprocess
import sys
from pathlib import Path
from typing import Any

MIB = 1024.0


def machine() -> dict[str, Any]:
    """What the figures were measured on."""
    model = ""
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    memory_kib = 0
    try:
        for line in Path("/proc/meminfo").read_text().splitlines():
            if line.startswith("MemTotal:"):
                memory_kib = int(line.split()[1])
    except OSError:
        pass
    return {
        "host": platform.node(),
        "cores": os.cpu_count(),
        "cpu_model": model,
        "memory_gib": round(memory_kib / MIB / MIB, 1),
        "kernel": platform.release(),
        "python": platform.python_version(),
        "python_implementation": sys.implementation.name,
    }


def versions(extra: dict[str, str] | None = None) -> dict[str, str]:
    found: dict[str, str] = {}
    for dist in ("kopf", "kubernetes_asyncio", "aiohttp", "pydantic", "job-operator"):
        try:
            found[dist] = importlib.metadata.version(dist)
        except importlib.metadata.PackageNotFoundError:
            found[dist] = "?"
    found.update(extra or {})
    return found


def etcd_version(etcd: Path | None) -> str:
    if etcd is None:
        return "?"
    try:
        out = subprocess.run([str(etcd), "--version"], capture_output=True, text=True, timeout=10)
    except (OSError, subprocess.TimeoutExpired):
        return "?"
    for line in out.stdout.splitlines():
        if line.lower().startswith("etcd version"):
            return line.split(":", 1)[1].strip()
    return "?"


# --- formatting ---------------------------------------------------------------------------


def ms(value: float | None) -> str:
    if value is None:
        return "-"
    return f"{value * 1000:,.0f} ms" if value < 10 else f"{value:,.1f} s"


def num(value: float | None, digits: int = 1) -> str:
    return "-" if value is None else f"{value:,.{digits}f}"


def mib(kib: int | None) -> str:
    return "-" if not kib else f"{kib / MIB:,.0f} MiB"


def cores(shares: dict[str, float] | None) -> str:
    """CPU use per process, in cores (1.00 = one core busy)."""
    if not shares:
        return "-"
    order = ["operator", "apiserver", "etcd", "simulator", "bench", "other"]
    parts = [f"{name} {shares[name]:.2f}" for name in order if name in shares]
    return ", ".join(parts)


def http_api_section(api: dict[str, Any] | None) -> list[str]:
    """The HTTP API beside the annotation path, at the same rates in the same run."""
    if not api:
        return []
    out = ["## The HTTP API (`job-operator api`) beside the annotation path", ""]
    out += [
        "Each rate runs twice, one after the other: requests written as annotations, then "
        "the same rate through the API (POST, bearer token, waiting for the outcome). "
        "*recorded* is from the send to the operator's status write seen by a watch (both "
        "paths); *response* is what an API caller waits: the HTTP answer.",
        "",
    ]
    rows = []
    for pair in api["steady"]:
        a, h = pair["annotation"], pair["api"]
        rows.append([
            f"{pair['rate']:g}/s", ms(a["latency"]["p50"]), ms(a["latency"]["p99"]),
            ms(h["latency"]["p50"]), ms(h["latency"]["p99"]), ms(h["response"]["p50"]),
            ms(h["response"]["p99"]), f"{h['recorded']}/{h['requests']}",
            num(h.get("api_cpu_ms_per_request"), 2),
        ])  # fmt: skip
    out += table(
        ["rate", "annotation recorded p50", "p99", "API recorded p50", "p99",
         "API response p50", "p99", "API recorded", "API CPU ms/request"],
        rows,
    )  # fmt: skip
    waiting = api.get("waiting")
    if waiting:
        out += [
            f"{waiting['requests']:,} requests waiting at once (the operator stopped): "
            f"{waiting['waiting_at_once']:,.0f} counted waiting; the API's memory "
            f"{mib(waiting['memory_before_kib'].get('VmRSS'))} before, "
            f"{mib(waiting['memory_waiting_kib'].get('VmRSS'))} with them waiting (peak "
            f"{mib(waiting['memory_waiting_kib'].get('VmHWM'))}); the operator started "
            f"again, all {waiting['answered_200']:,} answered 200 in "
            f"{num(waiting['seconds_to_answer_all_after_operator_start'])} s.",
            "",
        ]
    return out


def table(header: list[str], rows: list[list[str]]) -> list[str]:
    lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
    lines += ["| " + " | ".join(row) + " |" for row in rows]
    return [*lines, ""]


def cpu_ms(run: dict[str, Any], who: str) -> str:
    value = (run.get("cpu_ms_per_cycle") or {}).get(who)
    return "-" if value is None else f"{value:.1f}"


def writes(run: dict[str, Any], who: str) -> str:
    api = run.get("api")
    if not api:
        return "-"
    return num(api.get(f"{who}_writes_per_cycle"), 2)


# --- targets ------------------------------------------------------------------------------


def best_ceiling(results: dict[str, Any]) -> float | None:
    """The higher of the two ceiling measurements: what the server can do, at least."""
    rates = [(results.get(name) or {}).get("rate") for name in ("ceiling", "ceiling_recheck")]
    return max((r for r in rates if r), default=None)


def targets(results: dict[str, Any]) -> list[dict[str, Any]]:
    """Each target: what it asks, what was measured, met or not."""
    found: list[dict[str, Any]] = []
    ceiling = best_ceiling(results)
    storms = results.get("storms") or []
    if storms and ceiling:
        largest = max(storms, key=lambda s: s["requests"])
        throughput = largest.get("throughput") or 0.0
        ratio = throughput / ceiling
        found.append({
            "target": "storm throughput >= 25% of the raw status-PATCH ceiling",
            "measured": f"{ratio:.1%} ({throughput:,.0f}/s of {ceiling:,.0f}/s, "
                        f"{largest['requests']:,} jobs)",
            "met": ratio >= 0.25,
        })  # fmt: skip
    steady = results.get("steady") or []
    at_100 = [s for s in steady if s.get("rate") == 100]
    if at_100:
        p99 = at_100[0]["latency"]["p99"]
        found.append({
            "target": "p99 request-to-handled < 250 ms at a steady 100 requests/s",
            "measured": ms(p99),
            "met": p99 is not None and p99 < 0.25,
        })  # fmt: skip
    cost = results.get("redispatch_cost") or {}
    if cost.get("api"):
        operator = cost["api"]["operator_writes_per_cycle"]
        found.append({
            "target": "<= 5 API writes per reschedule-to-redispatch cycle (goal 4)",
            "measured": f"{operator:.2f}",
            "met": operator <= 5.0 + 1e-9,
        })  # fmt: skip
    startups = results.get("startups") or []
    population = results.get("population") or 0
    at_size = [st for st in startups if st.get("population") == population]
    peaks = [(results.get("memory_end_kib") or {}).get("VmHWM")]
    peaks += [(st.get("memory_after_start_kib") or {}).get("VmHWM") for st in at_size]
    peak = max((p for p in peaks if p), default=None)
    if peak:
        found.append({
            "target": f"peak RSS at {population:,} jobs < 250 MB",
            "measured": f"{peak * 1024 / 1e6:,.0f} MB",
            "met": peak * 1024 < 250e6,
        })  # fmt: skip
    if at_size:
        first = at_size[-1].get("first_handled_seconds")
        found.append({
            "target": f"start-up with {population:,} jobs to first handling < 15 s",
            "measured": f"{num(first)} s (both waiting requests: "
                        f"{num(at_size[-1].get('all_handled_seconds'))} s)",
            "met": first is not None and first < 15.0,
        })  # fmt: skip
    return found


# --- the document -------------------------------------------------------------------------


def render(results: dict[str, Any]) -> str:
    meta = results["meta"]
    host = meta["machine"]
    plan = meta["plan"]
    out: list[str] = [f"# job-operator benchmark — {meta['date']} on {host['host']}", ""]
    out += [
        f"Machine: {host['cores']} cores ({host['cpu_model'] or 'unknown CPU'}), "
        f"{host['memory_gib']} GiB, Linux {host['kernel']}, "
        f"{host['python_implementation']} {host['python']}. "
        "The API server, etcd, the operator, the simulator and the benchmark share these cores.",
        "",
        "Versions: " + ", ".join(f"{k} {v}" for k, v in meta["versions"].items()) + ".",
        "",
        f"Operator source: {meta.get('source', '?')}. Load average when the run began: "
        f"{meta.get('load_average_at_start', 0):.2f} (`other` in the CPU columns is everything "
        "else the machine ran meanwhile).",
        "",
        f"Settings: storms over {', '.join(f'{n:,}' for n in plan['storm_sizes'])} jobs; "
        f"steady rates {', '.join(f'{r:g}' for r in plan['rates'])}/s for "
        f"{plan['rate_seconds']:g} s each; {plan['connections']} client connections; "
        f"simulator provisioning {plan['provision_seconds']:g} s (executors then stay "
        "Running: a run of a day); operator flags: "
        f"`{' '.join(plan['operator_args']) or '(defaults)'}`. "
        f"Whole run: {meta.get('total_seconds', 0) / 60:.1f} min.",
        "",
    ]
    found = results.get("targets") or []
    if found:
        out += ["## Targets", ""]
        out += table(
            ["target", "measured", "met"],
            [[t["target"], t["measured"], "yes" if t["met"] else "**no**"] for t in found],
        )
    ceiling = results.get("ceiling")
    if ceiling:
        out += ["## Ceiling: raw status PATCHes (ceilings.bench.job-operator.dev)", ""]
        rows = []
        for label, c in (("start", ceiling), ("end", results.get("ceiling_recheck"))):
            if not c:
                continue
            server = c.get("server") or {}
            rows.append([
                label, f"{c['rate']:,.0f}/s", ms(c["latency"]["p50"]), ms(c["latency"]["p99"]),
                str(c["errors"]), num(c.get("apiserver_cpu_ms_per_patch"), 2),
                num(server.get("heap_alloc_mib_per_cycle"), 2), cores(c.get("cpu_share")),
            ])  # fmt: skip
        out += table(
            ["when", "PATCH/s", "p50", "p99", "errors", "apiserver CPU ms/PATCH",
             "Go heap MiB/PATCH", "CPU (cores)"],
            rows,
        )  # fmt: skip
        out += [
            "The ceiling runs with the operator and the simulator idle (they do not watch "
            "ceilings) but present; the end figure is after the storms, with 10,000 jobs, "
            "their executors and their events stored.",
            "",
        ]
    storms = results.get("storms") or []
    if storms:
        out += ["## Reschedule storms", ""]
        rows = []
        best = best_ceiling(results)
        for s in storms:
            ratio = (s["throughput"] / best) if (best and s["throughput"]) else None
            rows.append([
                f"{s['requests']:,}", f"{s['recorded']:,}", num(s["throughput"]),
                "-" if ratio is None else f"{ratio:.1%}",
                num(s.get("annotate_rate"), 0), ms(s["latency"]["p50"]),
                ms(s["latency"]["p95"]), ms(s["latency"]["p99"]), ms(s["cycle"]["p50"]),
                ms(s["cycle"]["p99"]), writes(s, "operator"), cpu_ms(s, "operator"),
                cpu_ms(s, "apiserver"), cores(s.get("cpu_share")),
            ])  # fmt: skip
        out += table(
            ["jobs", "recorded", "handled/s", "of ceiling", "annotations/s", "p50", "p95",
             "p99", "cycle p50", "cycle p99", "operator writes/cycle",
             "operator CPU ms/cycle", "apiserver CPU ms/cycle", "CPU (cores)"],
            rows,
        )  # fmt: skip
        out += [
            "handled/s: requests recorded per second, from the first annotation sent to the "
            "last token seen in `status.reschedule.request`; of ceiling: against the higher "
            "of the two ceiling measurements. p50/p95/p99: annotation sent to "
            "token recorded. cycle: annotation sent to the job `running` on a new "
            "ExecutorCluster.",
            "",
        ]
    steady = results.get("steady") or []
    if steady:
        out += ["## Steady open-loop rates", ""]
        rows = []
        for s in steady:
            rows.append([
                f"{s['rate']:g}/s", f"{s['requests']:,}", f"{s['recorded']:,}",
                num(s["throughput"]), ms(s["latency"]["p50"]), ms(s["latency"]["p95"]),
                ms(s["latency"]["p99"]), ms(s["cycle"]["p50"]), ms(s["cycle"]["p99"]),
                writes(s, "operator"), cpu_ms(s, "operator"), cpu_ms(s, "apiserver"),
                cores(s.get("cpu_share")),
            ])  # fmt: skip
        out += table(
            ["offered", "requests", "recorded", "handled/s", "p50", "p95", "p99",
             "cycle p50", "cycle p99", "operator writes/cycle", "operator CPU ms/cycle",
             "apiserver CPU ms/cycle", "CPU (cores)"],
            rows,
        )  # fmt: skip
    out += http_api_section(results.get("api"))
    cost = results.get("redispatch_cost")
    runs_with_api = [r for r in [cost, *storms, *steady] if r and r.get("api")]
    if runs_with_api:
        out += ["## API cost per cycle (from the API server's /metrics)", ""]
        out += [
            "Write requests (POST/PUT/PATCH/DELETE, including refused ones) per request "
            "handled. *redispatch cost* runs where no simulator does, so it is exactly "
            "reschedule-to-redispatch; the other rows run to `running` again, so they also "
            "hold the operator's write that follows the executor to Running.",
            "",
        ]
        rows = []
        for r in runs_with_api:
            api = r["api"]
            kinds = api["writes_per_cycle"].get("operator", {})
            detail = ", ".join(f"{k} {v:.2f}" for k, v in sorted(kinds.items()))
            conflicts = sum(api["conflicts_per_cycle"].values())
            reads = sum(sum(v.values()) for v in api["reads_per_cycle"].values())
            rows.append([
                r["label"], f"{api['cycles']:,}", num(api["operator_writes_per_cycle"], 2),
                detail, num(conflicts, 2), num(api["simulator_writes_per_cycle"], 2),
                num(api["bench_writes_per_cycle"], 2), num(reads, 2),
            ])  # fmt: skip
        out += table(
            ["batch", "cycles", "operator writes", "of which", "409s", "simulator writes",
             "benchmark writes", "reads (all)"],
            rows,
        )  # fmt: skip
        if cost and cost.get("api"):
            reads = cost["api"]["reads_per_cycle"]
            detail = "; ".join(
                f"{who}: " + ", ".join(f"{k} {v:.2f}" for k, v in sorted(kinds.items()))
                for who, kinds in sorted(reads.items())
            )
            out += [f"Reads per redispatch cycle: {detail or 'none'}.", ""]
        served = [r for r in runs_with_api if r.get("server")]
        if served:
            out += [
                "What the API server did per cycle (its /metrics): watch events sent to all "
                "watchers (operator, simulator, benchmark) and their size, response bytes, "
                "objects looked at by LISTs, Go heap allocated, and its CPU.",
                "",
            ]
            rows = []
            for r in served:
                w = r["server"]
                rows.append([
                    r["label"], num(w["watch_events_per_cycle"]), num(w["watch_kib_per_cycle"]),
                    num(w["response_kib_per_cycle"]), num(w["list_objects_per_cycle"]),
                    num(w["heap_alloc_mib_per_cycle"], 2), cpu_ms(r, "apiserver"),
                ])  # fmt: skip
            out += table(
                ["batch", "watch events", "watch KiB", "response KiB", "LIST objects",
                 "Go heap MiB", "apiserver CPU ms"],
                rows,
            )  # fmt: skip
        if any(r["api"].get("events_counted_by_list") for r in runs_with_api):
            out += [
                "Events are served by the test server's in-memory sink, outside the API "
                "server's metrics: `POST events` is counted by listing them.",
                "",
            ]
    populations = [p for p in results.get("populations") or [] if p]
    if populations:
        out += ["## Making the populations (benchmark writes, operator stopped)", ""]
        rows = [
            [f"{p['before']:,} → {p['before'] + p['created']:,}", num(p["seconds"]),
             num(p["rate"]), str(p["not_running"]), cores(p.get("cpu_share"))]
            for p in populations
        ]  # fmt: skip
        out += table(["jobs", "seconds", "jobs/s", "not running", "CPU (cores)"], rows)
    startups = results.get("startups") or []
    if startups:
        out += ["## Operator start-up with the jobs present", ""]
        out += [
            "The operator is stopped, the population made, one request written on the first "
            "and one on the last job in list order; then the operator starts. Seconds from "
            "its spawn.",
            "",
        ]
        rows = [
            [f"{st['population']:,}", num(st["ready_seconds"]), num(st["first_handled_seconds"]),
             num(st["all_handled_seconds"]), num(st["settled_seconds"]),
             mib((st.get("memory_after_start_kib") or {}).get("VmHWM"))]
            for st in startups
        ]  # fmt: skip
        out += table(
            ["jobs", "/readyz", "first request handled", "both handled",
             "CPU settled (< 10% of a core)", "peak RSS by then"],
            rows,
        )  # fmt: skip
    memory = results.get("memory_end_kib") or {}
    if memory:
        out += [f"## Operator memory ({results.get('population', 0):,} jobs)", ""]
        out += [
            f"Peak RSS (VmHWM) of the operator that started with the jobs present and then "
            f"ran the storm and the steady rates: **{mib(memory.get('VmHWM'))}**; RSS at the "
            f"end: {mib(memory.get('VmRSS'))}.",
            "",
        ]
    return "\n".join(out).rstrip() + "\n"
