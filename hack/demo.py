"""`make demo`: the whole story on one machine, in about a minute.

Starts a real Kubernetes API server (the test control plane), installs the CRDs,
runs the operator and the executor simulator, applies examples/, then shows a
reschedule of a running job, a skipped terminal job and a forced one, each with
the seed-shaped result. Everything it starts, it stops.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

from testenv.build import ControlPlaneError, ensure_built
from testenv.controlplane import ControlPlane

REPO = Path(__file__).resolve().parents[1]
NAMESPACE = "demo"
EXPECTED = {
    "waiting-for-capacity": "pending",
    "nightly-stats": "running",
    "test-stats": "completed",
    "broken-query": "failed",
    "not-needed-anymore": "cancelled",
}


def say(text: str) -> None:
    print(f"\n\033[1m== {text}\033[0m", flush=True)


class Demo:
    def __init__(self, control_plane: ControlPlane) -> None:
        self.cp = control_plane
        self.env = {
            **os.environ,
            "KUBECONFIG": str(control_plane.kubeconfig),
            "PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}",
        }
        self.processes: list[subprocess.Popen[bytes]] = []
        self.logs = control_plane.kubeconfig.parent

    def kubectl(self, *args: str, show: bool = False) -> str:
        argv = [str(self.cp.kubectl), *args]
        if show:
            print(f"$ kubectl {' '.join(args)}", flush=True)
        out = subprocess.run(argv, env=self.env, capture_output=True, text=True, check=True)
        if show:
            print(out.stdout, end="", flush=True)
        return out.stdout

    def job_operator(self, *args: str) -> dict[str, Any]:
        print(f"$ job-operator {' '.join(args)}", flush=True)
        out = subprocess.run(
            [sys.executable, "-m", "job_operator", *args, "-o", "json"],
            env=self.env,
            capture_output=True,
            text=True,
            check=False,
        )
        if out.returncode != 0:
            raise SystemExit(f"demo: job-operator failed: {out.stderr.strip()}")
        print(out.stdout, end="", flush=True)
        result: dict[str, Any] = json.loads(out.stdout)
        return result

    def spawn(self, name: str, *args: str) -> None:
        log = (self.logs / f"{name}.log").open("wb")
        self.processes.append(
            subprocess.Popen(
                [sys.executable, "-m", "job_operator", *args],
                env=self.env,
                stdout=log,
                stderr=subprocess.STDOUT,
                stdin=subprocess.DEVNULL,
            )
        )

    def states(self) -> dict[str, str]:
        jobs = json.loads(self.kubectl("get", "ojob", "-n", NAMESPACE, "-o", "json"))["items"]
        return {j["metadata"]["name"]: (j.get("status") or {}).get("state", "") for j in jobs}

    def wait(self, check: Callable[[], bool], what: str, timeout: float = 60) -> None:
        deadline = time.monotonic() + timeout
        while not check():
            for proc in self.processes:
                if proc.poll() is not None:
                    raise SystemExit(f"demo: a process exited early; see {self.logs}")
            if time.monotonic() > deadline:
                raise SystemExit(f"demo: timed out waiting for {what}")
            time.sleep(0.2)

    def stop(self) -> None:
        for proc in self.processes:
            proc.terminate()
        for proc in self.processes:
            try:
                proc.wait(15)
            except subprocess.TimeoutExpired:
                proc.kill()

    def run(self) -> None:
        say("Installing the CRDs")
        self.kubectl("apply", "-f", str(REPO / "crds"), show=True)
        self.kubectl("wait", "--for=condition=Established", "crd", "--all", "--timeout=60s")
        self.kubectl("create", "namespace", NAMESPACE, show=True)

        say("Starting the operator and the executor simulator")
        self.spawn("operator", "run", "-n", NAMESPACE, "--no-leader-elect", "--metrics-port", "0")
        self.spawn(
            "simulator",
            "simulate",
            "-n",
            NAMESPACE,
            "--provision-seconds",
            "0.5",
            "--run-seconds",
            "2",
        )

        say("Applying examples/ (one job per state)")
        for path in sorted((REPO / "examples").glob("job-*.yaml")):
            self.kubectl("apply", "-n", NAMESPACE, "-f", str(path), show=True)
        self.wait(lambda: self.states() == EXPECTED, "every example in its state")
        self.kubectl("get", "ojob", "-n", NAMESPACE, show=True)

        say("1. A running job, stuck: reschedule it onto a fresh cluster")
        before = self.states()
        running = self.job_operator("reschedule", "nightly-stats", "-n", NAMESPACE)
        assert before["nightly-stats"] == "running" and running["outcome"] == "rescheduled"

        say("2. A completed job: without --force it is left alone")
        skipped = self.job_operator("reschedule", "test-stats", "-n", NAMESPACE)
        assert skipped["outcome"] == "skipped_terminal" and skipped["state"] == "completed"

        say("3. The same job with --force: it runs again, on a fresh cluster")
        forced = self.job_operator("reschedule", "test-stats", "-n", NAMESPACE, "--force")
        assert forced["outcome"] == "rescheduled" and forced["state"] == "pending"
        self.wait(lambda: self.states()["test-stats"] == "completed", "the forced re-run")
        self.wait(lambda: self.states()["nightly-stats"] == "running", "the rescheduled job")
        self.kubectl("get", "ojob,ec", "-n", NAMESPACE, show=True)
        say("Done: rescheduled, skipped_terminal, rescheduled (forced)")


def main() -> int:
    try:
        control_plane = ControlPlane(ensure_built())
        say("Starting a Kubernetes API server (etcd + apiextensions-apiserver)")
        control_plane.start()
    except ControlPlaneError as error:
        print(f"demo: {error}", file=sys.stderr)
        return 1
    demo = Demo(control_plane)
    try:
        demo.run()
    finally:
        demo.stop()
        control_plane.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())
