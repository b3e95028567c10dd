"""Bulk reschedule (`job-operator reschedule -l/--state/--type/--all`) against a real API
server, operator and simulator: the morning after an outage.

What a run wrote is read from the API server's audit log, by the identity the command ran
as (a client certificate of its own), so "the dry run wrote nothing", "each job was asked
once" and "never more than --max-in-flight waiting" are the server's word, not the CLI's.
"""

from __future__ import annotations

import json
import os
import pty
import queue
import signal
import subprocess
import sys
import threading
from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from datetime import datetime
from pathlib import Path
from typing import Any

import pytest
import yaml

from job_operator import names
from job_operator.models import parse_time
from tests.helpers import Kube, run_plugin, wait_for
from tests.identities import IdentityMinter
from tests.integration.conftest import HANG, REPO, Jobs, Operator, Process, job_operator_env

# How the simulator ends each attempt, for each state a job of the fleet is to be in
# (a cancelled job hangs until it is cancelled).
OUTCOME_FOR_STATE = {
    "pending": "stall",
    "running": "hang",
    "completed": "succeed",
    "failed": "fail",
    "cancelled": "hang",
}
WANT_LABEL = "bulk-test/want"
TEAM_LABEL = "team"
READ_VERBS = {"get", "list", "watch"}


def cli_argv(*args: str) -> list[str]:
    return [sys.executable, "-m", "job_operator", *args]


def run_cli(
    env: dict[str, str], *args: str, timeout: float = 180
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        cli_argv(*args),
        env=env,
        capture_output=True,
        text=True,
        timeout=timeout,
        stdin=subprocess.DEVNULL,
        check=False,
    )


def start_cli(env: dict[str, str], *args: str) -> subprocess.Popen[str]:
    """The CLI in the background, its stdout a pipe (read it with Lines)."""
    return subprocess.Popen(
        cli_argv(*args),
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        stdin=subprocess.DEVNULL,
        text=True,
    )


def json_lines(stdout: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in stdout.splitlines() if line.strip()]


def job_lines(lines: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """The per-job lines of a bulk command's JSON output, by job name."""
    return {line["name"]: line for line in lines if "name" in line}


def summary_of(lines: list[dict[str, Any]]) -> dict[str, Any]:
    summary: dict[str, Any] = lines[-1]["summary"]
    return summary


@dataclass
class Cli:
    """Who the CLI runs as: an identity of its own, so that its requests can be told apart
    in the audit log (`user` None: no audit log, on an external cluster). `rbac`: bound in
    the test's namespace to one of the roles deploy/ ships for users."""

    user: str | None
    env: dict[str, str]
    rbac: bool


def serves_rbac(kube: Kube) -> bool:
    found = kube.kubectl_run("api-resources", "--api-group=rbac.authorization.k8s.io", "-o", "name")
    return "clusterroles" in found.stdout


def cli_as(kube: Kube, namespace: str, mint_identity: IdentityMinter, role: str) -> Cli:
    """A service account bound to the ClusterRole `role` (from deploy/) in `namespace`.

    Where the API server has no RBAC (the suite's own, until it serves it), everyone but
    `system:masters` may do nothing: the editor is then in that group, the viewer not."""
    account = role.removeprefix("job-operator-")
    rbac = serves_rbac(kube)
    if rbac:
        kube.kubectl_run("apply", "-f", str(REPO / "deploy" / "base" / "user-roles.yaml"))
        identity = mint_identity(f"system:serviceaccount:{namespace}:{account}")
        kube.kubectl_run(
            "create", "rolebinding", account, "-n", namespace, f"--clusterrole={role}",
            f"--serviceaccount={namespace}:{account}",
        )  # fmt: skip
    elif role == "job-operator-edit":
        identity = mint_identity(f"{account}-{namespace}", ["system:masters"])
    else:
        identity = mint_identity(f"{account}-{namespace}")
    env = job_operator_env(identity.kubeconfig)
    cp = kube.control_plane
    audited = cp is not None and cp.audit_log is not None
    return Cli(identity.name if audited else None, env, rbac)


@pytest.fixture
def editor(kube: Kube, namespace: str, mint_identity: IdentityMinter) -> Cli:
    """Who may reschedule in the namespace: `edit` (job-operator-edit)."""
    return cli_as(kube, namespace, mint_identity, "job-operator-edit")


@pytest.fixture
def viewer(kube: Kube, namespace: str, mint_identity: IdentityMinter) -> Cli:
    """Who may only read there: `view` (job-operator-view), no `patch` on jobs."""
    return cli_as(kube, namespace, mint_identity, "job-operator-view")


def audit_log(kube: Kube) -> Path:
    assert kube.control_plane is not None and kube.control_plane.audit_log is not None
    return kube.control_plane.audit_log


def audit_events(kube: Kube, user: str, since: int = 0) -> list[dict[str, Any]]:
    """Every request `user` made (its last stage), from the audit log (from byte `since`)."""
    with audit_log(kube).open("rb") as log:
        log.seek(since)
        data = log.read()
    found = []
    for line in data[: data.rfind(b"\n") + 1].decode().splitlines():
        event: dict[str, Any] = json.loads(line)
        if (event.get("user") or {}).get("username") == user and event.get("stage") in (
            "ResponseComplete",
            "ResponseStarted",
        ):
            found.append(event)
    return found


def request_patches(kube: Kube, user: str, since: int = 0) -> list[dict[str, Any]]:
    """`user`'s successful writes of jobs (their request annotations), from the audit log.
    (A write cut off by an interrupted client ends in 504, whether it took effect or not.)"""
    return [
        e
        for e in audit_events(kube, user, since)
        if e["verb"] == "patch"
        and e.get("stage") == "ResponseComplete"
        and e["responseStatus"]["code"] == 200
        and (e.get("objectRef") or {}).get("resource") == names.JOB_PLURAL
        and not (e.get("objectRef") or {}).get("subresource")
    ]


def most_waiting(intervals: list[tuple[datetime, datetime]]) -> int:
    """The most intervals open at one moment (an end before a start at the same instant)."""
    edges = sorted([(start, 1) for start, _ in intervals] + [(end, -1) for _, end in intervals])
    most = open_now = 0
    for _, step in edges:
        open_now += step
        most = max(most, open_now)
    return most


def all_jobs(jobs: Jobs) -> list[dict[str, Any]]:
    out = jobs.kube.kubectl_run("get", "ojob", "-n", jobs.namespace, "-o", "json")
    items: list[dict[str, Any]] = json.loads(out.stdout)["items"]
    return items


def create_all(jobs: Jobs, manifests: list[dict[str, Any]]) -> None:
    """One kubectl apply for many jobs."""
    listed = {"apiVersion": "v1", "kind": "List", "items": manifests}
    jobs.kube.kubectl_run("apply", "-f", "-", input=yaml.safe_dump(listed))


def wait_states(jobs: Jobs, want: dict[str, str], timeout: float = 120) -> list[dict[str, Any]]:
    """Until each named job is in its state; returns all jobs."""

    def settled() -> list[dict[str, Any]] | None:
        items = all_jobs(jobs)
        states = {j["metadata"]["name"]: (j.get("status") or {}).get("state") for j in items}
        wrong = {n: states.get(n) for n, s in want.items() if states.get(n) != s}
        return None if wrong else items

    items: list[dict[str, Any]] = wait_for(
        settled, timeout=timeout, interval=0.5, description="every job in its state"
    )
    return items


@pytest.fixture
def fleet(jobs: Jobs, operator: Operator, simulator: Process) -> dict[str, dict[str, str]]:
    """55 jobs, 11 in each state, in two teams (labels) and two types: name -> labels."""
    manifests, labels = [], {}
    for i in range(55):
        state = list(OUTCOME_FOR_STATE)[i % 5]
        name = f"job-{i:02d}-{state}"
        labels[name] = {TEAM_LABEL: "red" if i % 2 else "blue", WANT_LABEL: state}
        manifest = jobs.manifest(
            name,
            annotations={names.SIMULATE_OUTCOME_ANNOTATION: OUTCOME_FOR_STATE[state]},
            type="materialize-view" if i % 3 else "compact-table",
        )
        manifest["metadata"]["labels"] = labels[name]
        manifests.append(manifest)
    create_all(jobs, manifests)
    # Cancelled jobs: cancelled once running.
    wait_states(jobs, {n: "running" for n, lab in labels.items() if lab[WANT_LABEL] == "cancelled"})
    jobs.kube.kubectl_run(
        "annotate", "ojob", "-n", jobs.namespace, "-l", f"{WANT_LABEL}=cancelled",
        f"{names.CANCEL_ANNOTATION}=bulk-test",
    )  # fmt: skip
    wait_states(jobs, {n: lab[WANT_LABEL] for n, lab in labels.items()})
    return labels


def test_selection_dry_run_predicts_the_run_within_max_in_flight(
    kube: Kube, jobs: Jobs, fleet: dict[str, dict[str, str]], editor: Cli
) -> None:
    ns = jobs.namespace
    red = {n for n, lab in fleet.items() if lab[TEAM_LABEL] == "red"}
    # A selector picks exactly its subset; --state and --type narrow it on top.
    dry = run_cli(editor.env, "reschedule", "-n", ns, "-l", "team=red", "--dry-run", "-o", "json")
    assert dry.returncode == 0, dry.stderr
    dry_lines = json_lines(dry.stdout)
    predicted = job_lines(dry_lines)
    assert set(predicted) == red
    narrow = run_cli(
        editor.env, "reschedule", "-n", ns, "-l", "team=red", "--state", "failed,completed",
        "--type", "compact-table", "--dry-run", "-o", "json",
    )  # fmt: skip
    assert narrow.returncode == 0, narrow.stderr
    by_spec = {
        j["metadata"]["name"]
        for j in all_jobs(jobs)
        if j["metadata"]["name"] in red
        and j["status"]["state"] in ("failed", "completed")
        and j["spec"]["type"] == "compact-table"
    }
    assert by_spec and set(job_lines(json_lines(narrow.stdout))) == by_spec

    # The prediction: the operator's decision for each job's state.
    for name, line in predicted.items():
        terminal = fleet[name][WANT_LABEL] in ("completed", "failed", "cancelled")
        assert line["outcome"] == ("skipped_terminal" if terminal else "rescheduled"), line
        assert line["why"]
    token = dry_lines[0]["token"]
    assert all(
        (j["status"].get("reschedule") or {}).get("request") != token for j in all_jobs(jobs)
    )
    if editor.user is not None:
        verbs = {e["verb"] for e in audit_events(kube, editor.user)}
        assert verbs and verbs <= READ_VERBS, verbs

    # The run: every red job handled, as predicted, never more than 3 waiting at once.
    run = run_cli(
        editor.env, "reschedule", "-n", ns, "-l", "team=red", "--max-in-flight", "3",
        "-o", "json",
    )  # fmt: skip
    assert run.returncode == 0, run.stderr
    lines = json_lines(run.stdout)
    token = lines[0]["token"]
    done = job_lines(lines)
    assert {n: line["outcome"] for n, line in done.items()} == {
        n: line["outcome"] for n, line in predicted.items()
    }
    assert all(line["in_flight"] <= 3 for line in done.values())
    summary = summary_of(lines)
    assert summary["not_handled"] == [] and summary["selected"] == len(red)
    assert sum(summary["outcomes"].values()) == len(red)
    items = {j["metadata"]["name"]: j for j in all_jobs(jobs)}
    for name in red:
        assert items[name]["status"]["reschedule"]["request"] == token
    for name in set(fleet) - red:
        assert names.RESCHEDULE_ANNOTATION not in items[name]["metadata"].get("annotations", {})
    if editor.user is not None:
        patches = request_patches(kube, editor.user)
        assert Counter(p["objectRef"]["name"] for p in patches) == Counter(red)
        waiting = [
            (
                parse_time(p["requestReceivedTimestamp"]),
                parse_time(items[p["objectRef"]["name"]]["status"]["reschedule"]["handledAt"]),
            )
            for p in patches
        ]
        assert 1 < most_waiting(waiting) <= 3
        assert summary["max_in_flight"] <= 3


def test_without_an_operator_only_max_in_flight_requests_are_written_then_resumed(
    kube: Kube, jobs: Jobs, make_operator: Callable[..., Operator], editor: Cli
) -> None:
    """No operator handles anything at first: the run writes --max-in-flight requests,
    waits for them until --timeout, and lists every job as not handled. Resumed with the
    token once an operator runs, it only waits for the two already written, and writes
    the rest: one write per job in all."""
    manifests = [jobs.manifest(f"idle-{i}") for i in range(6)]
    for manifest in manifests:
        manifest["metadata"]["labels"] = {TEAM_LABEL: "idle"}
    create_all(jobs, manifests)
    command = ("reschedule", "-n", jobs.namespace, "-l", "team=idle", "--max-in-flight", "2")
    proc = run_cli(editor.env, *command, "--timeout", "3")
    assert proc.returncode == 4, proc.stderr
    token = proc.stdout.split()[1].rstrip(":")
    annotated = [
        j["metadata"]["name"]
        for j in all_jobs(jobs)
        if j["metadata"].get("annotations", {}).get(names.RESCHEDULE_ANNOTATION) == token
    ]
    assert len(annotated) == 2
    assert "not handled in time: 6:" in proc.stdout
    assert f"--token {token}" in proc.stdout

    # Resumed before an operator runs (it has listed the jobs: its first line is out), so
    # the two written are still waiting when it classifies them.
    resumed = start_cli(editor.env, *command, "--token", token, "-o", "json")
    try:
        output = Lines(resumed)
        output.until(lambda seen: len(seen) >= 1, "the resumed run's first line")
        make_operator().start_and_wait()
        assert resumed.wait(120) == 0
    finally:
        if resumed.poll() is None:
            resumed.kill()
    lines = [json.loads(x) for x in output.until(lambda seen: '"summary"' in seen[-1], "summary")]
    assert summary_of(lines)["outcomes"] == {"rescheduled": 6}
    assert summary_of(lines)["already_handled"] == 0
    assert all(line["in_flight"] <= 2 for line in job_lines(lines).values())
    for job in all_jobs(jobs):
        assert job["status"]["reschedule"]["request"] == token
    if editor.user is not None:
        patches = request_patches(kube, editor.user)
        assert Counter(p["objectRef"]["name"] for p in patches) == Counter(
            m["metadata"]["name"] for m in manifests
        )


def test_empty_selection_and_name_with_selection_are_refused(kube: Kube, jobs: Jobs) -> None:
    jobs.create("only")
    env = job_operator_env(kube.kubeconfig)
    ns = ("-n", jobs.namespace)
    for args, says in (
        (ns, "no jobs selected"),
        (("-A",), "no jobs selected: give a job NAME, a selection"),
        ((*ns, "only", "-l", "team=red"), "not both"),
        ((*ns, "only", "--all"), "not both"),
        ((*ns, "--state", "stuck"), "unknown state stuck"),
        ((*ns, "--all", "-o", "yaml"), "-o text or -o json"),
    ):
        proc = run_cli(env, "reschedule", *args)
        assert proc.returncode == 2, (args, proc.stderr)
        assert says in proc.stderr, (args, proc.stderr)
        assert proc.stdout == ""
    # The same command as a kubectl plugin: `kubectl reschedule` takes a selection too.
    plugin = run_plugin(kube, env, "-n", jobs.namespace, "--all", "--dry-run", "-o", "json")
    assert plugin.returncode == 0, plugin.stderr
    assert set(job_lines(json_lines(plugin.stdout))) == {"only"}
    annotations = jobs.get("only")["metadata"].get("annotations", {})
    assert names.RESCHEDULE_ANNOTATION not in annotations


class Lines:
    """A process's output, read line by line in a thread (so waiting has a deadline)."""

    def __init__(self, proc: subprocess.Popen[str]) -> None:
        self.lines: queue.Queue[str] = queue.Queue()
        self.seen: list[str] = []
        assert proc.stdout is not None
        threading.Thread(target=self.read, args=(proc.stdout,), daemon=True).start()

    def read(self, stdout: Iterable[str]) -> None:
        for line in stdout:
            self.lines.put(line)

    def until(
        self, predicate: Callable[[list[str]], bool], description: str, timeout: float = 60
    ) -> list[str]:
        def check() -> list[str] | None:
            while not self.lines.empty():
                self.seen.append(self.lines.get())
            return self.seen if predicate(self.seen) else None

        found: list[str] = wait_for(check, timeout=timeout, description=description)
        return found


def test_interrupted_run_resumes_with_the_same_token_each_job_once(
    kube: Kube, jobs: Jobs, operator: Operator, simulator: Process, editor: Cli
) -> None:
    """Failed jobs, forced: some fail again when run (still `failed`, selected again),
    others then hang (now `running`: they left the selection). Interrupted after a few,
    the same command with the same token handles the rest, and each job exactly once."""
    count = 16
    manifests = [
        jobs.manifest(f"broken-{i:02d}", annotations={names.SIMULATE_OUTCOME_ANNOTATION: "fail"})
        for i in range(count)
    ]
    create_all(jobs, manifests)
    wait_states(jobs, {m["metadata"]["name"]: "failed" for m in manifests})
    # After the fix, half of them hang when run again: they leave `--state failed`.
    for manifest in manifests[::2]:
        jobs.annotate(manifest["metadata"]["name"], {names.SIMULATE_OUTCOME_ANNOTATION: "hang"})
    command = (
        "reschedule", "-n", jobs.namespace, "--state", "failed", "--force", "--yes",
        "--max-in-flight", "2", "-o", "json",
    )  # fmt: skip
    first = start_cli(editor.env, *command)
    try:
        lines = Lines(first)
        lines.until(lambda seen: sum('"outcome"' in x for x in seen) >= 4, "4 jobs handled")
        first.send_signal(signal.SIGINT)
        assert first.wait(60) == 130
    finally:
        if first.poll() is None:
            first.kill()
    seen = lines.until(lambda seen: '"summary"' in seen[-1], "the interrupted run's summary")
    token = json.loads(seen[0])["token"]
    interrupted = json.loads(seen[-1])["summary"]
    assert interrupted["interrupted"] and interrupted["not_handled"]
    handled_first = count - len(interrupted["not_handled"])
    assert 4 <= handled_first < count

    # What the first run wrote (the jobs carrying its token), and where the second begins.
    carried = {
        j["metadata"]["name"]
        for j in all_jobs(jobs)
        if j["metadata"].get("annotations", {}).get(names.RESCHEDULE_ANNOTATION) == token
    }
    assert len(carried) >= handled_first
    since = audit_log(kube).stat().st_size if editor.user is not None else 0
    second = run_cli(editor.env, *command, "--token", token)
    assert second.returncode == 0, second.stderr
    summary = summary_of(json_lines(second.stdout))
    assert summary["selected"] == count
    assert summary["outcomes"] == {"rescheduled": count}
    assert summary["already_handled"] >= handled_first
    assert len(summary["forced"]) == count
    for manifest in manifests:
        name = manifest["metadata"]["name"]
        job = jobs.get(name)
        assert job["status"]["reschedule"]["request"] == token
        assert job["status"]["reschedule"]["force"] is True
        assert jobs.event_reasons(name).count("Rescheduled") == 1, name
        manual = [h for h in job["status"].get("history", []) if h["reason"] == "Rescheduled"]
        assert len(manual) == 1, (name, job["status"]["history"])
    if editor.user is not None:  # the second run wrote each job the first had not, once
        patches = request_patches(kube, editor.user, since)
        assert Counter(p["objectRef"]["name"] for p in patches) == Counter(
            m["metadata"]["name"] for m in manifests if m["metadata"]["name"] not in carried
        )


def terminal_output(master: int) -> Iterator[str]:
    """All a process has written to its terminal so far, each time more comes."""
    buffer = b""
    while True:
        try:
            chunk = os.read(master, 4096)
        except OSError:  # the process closed the terminal
            return
        if not chunk:
            return
        buffer += chunk
        yield buffer.decode(errors="replace")


def test_forced_run_asks_on_a_terminal_and_names_what_it_forced(
    kube: Kube, jobs: Jobs, operator: Operator, simulator: Process
) -> None:
    for name in ("done-a", "done-b"):
        jobs.create(name)
    for name in ("done-a", "done-b"):
        jobs.wait_state(name, "completed")
    env = job_operator_env(kube.kubeconfig)
    command = ("reschedule", "-n", jobs.namespace, "--state", "completed", "--force")
    # No terminal, no --yes: refused, nothing written.
    refused = run_cli(env, *command)
    assert refused.returncode == 2
    assert "pass --yes" in refused.stderr

    def on_terminal(answer: str) -> tuple[int, str]:
        master, slave = pty.openpty()
        proc = subprocess.Popen(
            cli_argv(*command), env=env, stdin=slave, stdout=slave, stderr=slave
        )
        os.close(slave)
        try:
            seen = ""
            output = terminal_output(master)
            for seen in output:
                if "[y/N]" in seen:
                    break
            assert "Force a reschedule of 2 jobs (2 completed" in seen, seen
            os.write(master, answer.encode() + b"\n")
            seen = [seen, *output][-1]
            return proc.wait(60), seen
        finally:
            if proc.poll() is None:
                proc.kill()
            os.close(master)

    code, seen = on_terminal("n")
    assert code == 1 and "not confirmed; nothing was written" in seen
    for name in ("done-a", "done-b"):
        assert names.RESCHEDULE_ANNOTATION not in jobs.get(name)["metadata"].get("annotations", {})
    code, seen = on_terminal("y")
    assert code == 0, seen
    assert "2 jobs: 2 rescheduled" in seen
    forced = next(line for line in seen.splitlines() if line.startswith("forced, so run again"))
    assert f"{jobs.namespace}/done-a (completed)" in forced
    assert f"{jobs.namespace}/done-b (completed)" in forced
    for name in ("done-a", "done-b"):
        assert jobs.status(name)["reschedule"]["force"] is True


def test_a_viewer_is_refused_for_each_job_and_nothing_is_written(
    kube: Kube, jobs: Jobs, operator: Operator, simulator: Process, viewer: Cli
) -> None:
    """Without `patch` on jobs: each job's request refused by the API server, exit
    status 5, nothing written. A dry run needs only reading: a viewer may preview. (On
    an API server without RBAC, the viewer may not even list: refused at once.)"""
    manifests = [jobs.manifest(f"ro-{i}", annotations=HANG) for i in range(4)]
    create_all(jobs, manifests)
    wait_states(jobs, {m["metadata"]["name"]: "running" for m in manifests})
    command = ("reschedule", "-n", jobs.namespace, "--all", "-o", "json")
    proc = run_cli(viewer.env, *command)
    assert proc.returncode == 5, proc.stderr
    if viewer.rbac:
        lines = json_lines(proc.stdout)
        refused = job_lines(lines)
        assert set(refused) == {m["metadata"]["name"] for m in manifests}
        for name, line in refused.items():
            assert line["outcome"] == "forbidden", line
            assert f'cannot patch resource "jobs" in API group "{names.GROUP}"' in line["detail"]
            assert line["job"] == f"{jobs.namespace}/{name}"
        assert len(summary_of(lines)["failures"]) == len(manifests)
        preview = run_cli(viewer.env, *command, "--dry-run")
        assert preview.returncode == 0, preview.stderr
        outcomes = {line["outcome"] for line in job_lines(json_lines(preview.stdout)).values()}
        assert outcomes == {"rescheduled"}
    else:
        (refusal,) = proc.stderr.splitlines()
        assert refusal.startswith(f'job-operator: forbidden: User "{viewer.user}" cannot list')
    for job in all_jobs(jobs):
        assert names.RESCHEDULE_ANNOTATION not in job["metadata"].get("annotations", {})
    if viewer.user is not None:
        written = [e for e in audit_events(kube, viewer.user) if e["verb"] not in READ_VERBS]
        assert all(e["responseStatus"]["code"] == 403 for e in written), written
