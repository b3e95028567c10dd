"""The executor simulator's plan (pure) and its driver, against a fake API."""

from __future__ import annotations

import argparse
import asyncio
import logging
import uuid
from collections import Counter
from typing import Any, cast

import pytest
from kubernetes_asyncio.client.exceptions import ApiException

from job_operator import names
from job_operator.kube import Kube, NotFound
from job_operator.simulator import (
    Plan,
    Simulator,
    SimulatorConfig,
    _Driver,
    add_arguments,
    config_from_args,
    overrides_from_annotations,
    plan,
)

UID = "5f0c2f5e-3b7a-4c41-9d0e-2b1f7a9c8e11"


def uids(count: int) -> list[str]:
    return [str(uuid.UUID(int=i * 7919 + 1, version=4)) for i in range(count)]


def phases(p: Plan) -> list[str]:
    return [step.phase for step in p.steps]


# --- plan ------------------------------------------------------------------------------


def test_plan_is_deterministic_for_seed_and_uid() -> None:
    config = SimulatorConfig(fail_share=0.3, terminate_share=0.3, seed=42)
    assert plan(config, UID) == plan(config, UID)
    assert plan(SimulatorConfig(fail_share=0.3, terminate_share=0.3, seed=42), UID) == plan(
        config, UID
    )


def test_plan_depends_on_seed_and_uid() -> None:
    config = SimulatorConfig(seed=1)
    other_seed = SimulatorConfig(seed=2)
    results = {plan(config, uid).result["recalculation_id"] for uid in uids(50)}
    assert len(results) == 50
    assert plan(config, UID).result != plan(other_seed, UID).result


def test_default_plan_succeeds_with_a_seed_shaped_result() -> None:
    p = plan(SimulatorConfig(), UID)
    assert p.outcome == "succeed"
    assert phases(p) == ["Provisioning", "Running", "Succeeded"]
    assert p.steps[-1].result == p.result
    assert set(p.result) == {"dataset_id", "snapshot_id", "recalculation_id"}
    assert isinstance(p.result["dataset_id"], int)
    assert isinstance(p.result["snapshot_id"], int)
    assert uuid.UUID(p.result["recalculation_id"]).version == 4
    # Only Succeeded carries a result; the other writes clear any stale one.
    assert [step.status()["result"] is None for step in p.steps] == [True, True, False]


def test_result_takes_the_dataset_id_of_the_job_input() -> None:
    config = SimulatorConfig()
    p = plan(config, UID, job_input={"dataset_id": 10736, "nql": "..."})
    assert p.result["dataset_id"] == 10736
    assert p.result["recalculation_id"] == plan(config, UID).result["recalculation_id"]
    assert plan(config, UID, job_input={"dataset_id": "x"}).result == plan(config, UID).result


def test_delays_are_jittered_within_bounds() -> None:
    config = SimulatorConfig(provision_seconds=2.0, run_seconds=10.0, jitter=0.2)
    provisions, runs = [], []
    for uid in uids(500):
        p = plan(config, uid)
        assert p.steps[0].after == 0.0
        provisions.append(p.steps[1].after)
        runs.append(p.steps[2].after)
    assert all(1.6 <= s <= 2.4 for s in provisions)
    assert all(8.0 <= s <= 12.0 for s in runs)
    assert len(set(runs)) == len(runs)  # really jittered
    exact = plan(SimulatorConfig(provision_seconds=2.0, run_seconds=10.0, jitter=0.0), UID)
    assert [s.after for s in exact.steps] == [0.0, 2.0, 10.0]


def test_shares_are_respected_statistically() -> None:
    config = SimulatorConfig(fail_share=0.2, terminate_share=0.1, seed=7)
    count = 2000
    outcomes = Counter(plan(config, uid).outcome for uid in uids(count))
    assert outcomes.keys() <= {"succeed", "fail", "terminate"}
    assert abs(outcomes["fail"] / count - 0.2) < 0.04
    assert abs(outcomes["terminate"] / count - 0.1) < 0.03
    assert abs(outcomes["succeed"] / count - 0.7) < 0.04


@pytest.mark.parametrize(
    ("fail", "terminate", "expected"),
    [(0.0, 0.0, "succeed"), (1.0, 0.0, "fail"), (0.0, 1.0, "terminate")],
)
def test_extreme_shares(fail: float, terminate: float, expected: str) -> None:
    config = SimulatorConfig(fail_share=fail, terminate_share=terminate)
    assert {plan(config, uid).outcome for uid in uids(200)} == {expected}


def test_failed_and_terminated_plans_end_with_a_message_and_no_result() -> None:
    failed = plan(SimulatorConfig(fail_share=1.0), UID)
    assert phases(failed) == ["Provisioning", "Running", "Failed"]
    terminated = plan(SimulatorConfig(terminate_share=1.0), UID)
    assert phases(terminated) == ["Provisioning", "Running", "Terminated"]
    for p in (failed, terminated):
        assert p.steps[-1].result is None
        assert p.steps[-1].message


@pytest.mark.parametrize(
    ("outcome", "final"),
    [("succeed", "Succeeded"), ("fail", "Failed"), ("terminate", "Terminated"),
     ("hang", "Running"), ("stall", "Provisioning"), (" Fail ", "Failed")],
)  # fmt: skip
def test_outcome_annotation_overrides_the_seeded_outcome(outcome: str, final: str) -> None:
    config = SimulatorConfig(fail_share=0.5, terminate_share=0.5)
    annotations = {names.SIMULATE_OUTCOME_ANNOTATION: outcome}
    for uid in uids(20):
        p = plan(config, uid, annotations=annotations)
        assert p.final_phase == final
        # The override changes the outcome only: delays and result stay the seeded ones.
        seeded = plan(config, uid)
        assert p.result == seeded.result
        assert p.steps[: len(p.steps) - 1] == seeded.steps[: len(p.steps) - 1]


def test_hang_reaches_running_and_stays() -> None:
    p = plan(SimulatorConfig(), UID, annotations={names.SIMULATE_OUTCOME_ANNOTATION: "hang"})
    assert p.outcome == "hang"
    assert phases(p) == ["Provisioning", "Running"]
    assert p.remaining("Running") == ()


def test_run_seconds_annotation_is_taken_as_given() -> None:
    config = SimulatorConfig(run_seconds=3.0, jitter=0.5)
    p = plan(config, UID, annotations={names.SIMULATE_RUN_SECONDS_ANNOTATION: "0.25"})
    assert p.steps[-1].after == 0.25
    assert p.steps[1] == plan(config, UID).steps[1]


@pytest.mark.parametrize(
    "annotations",
    [
        {names.SIMULATE_OUTCOME_ANNOTATION: "explode"},
        {names.SIMULATE_OUTCOME_ANNOTATION: ""},
        {names.SIMULATE_RUN_SECONDS_ANNOTATION: "soon"},
        {names.SIMULATE_RUN_SECONDS_ANNOTATION: "-1"},
        {names.SIMULATE_RUN_SECONDS_ANNOTATION: "nan"},
        {names.SIMULATE_RUN_SECONDS_ANNOTATION: "inf"},
    ],
)
def test_invalid_overrides_fall_back_to_the_default_plan(
    annotations: dict[str, str], caplog: pytest.LogCaptureFixture
) -> None:
    config = SimulatorConfig(fail_share=0.3, terminate_share=0.3, seed=3)
    with caplog.at_level(logging.WARNING, logger="job_operator.simulator"):
        p = plan(config, UID, annotations=annotations)
    assert p == plan(config, UID)
    assert "ignoring" in caplog.text


def test_one_invalid_override_keeps_the_other() -> None:
    overrides = overrides_from_annotations(
        {names.SIMULATE_OUTCOME_ANNOTATION: "fail", names.SIMULATE_RUN_SECONDS_ANNOTATION: "x"}
    )
    assert overrides.outcome == "fail"
    assert overrides.run_seconds is None


def test_unrelated_annotations_are_ignored() -> None:
    assert overrides_from_annotations({names.RESCHEDULE_ANNOTATION: "1"}).outcome is None
    assert overrides_from_annotations(None).run_seconds is None


def test_remaining_steps_start_from_the_current_phase() -> None:
    p = plan(SimulatorConfig(), UID)
    assert [s.phase for s in p.remaining(None)] == ["Provisioning", "Running", "Succeeded"]
    assert [s.phase for s in p.remaining("Provisioning")] == ["Running", "Succeeded"]
    assert [s.phase for s in p.remaining("Running")] == ["Succeeded"]
    for terminal in ("Succeeded", "Failed", "Terminated"):
        assert p.remaining(terminal) == ()


@pytest.mark.parametrize(
    "kwargs",
    [
        {"provision_seconds": -1.0},
        {"run_seconds": float("inf")},
        {"fail_share": 1.5},
        {"terminate_share": -0.1},
        {"fail_share": 0.6, "terminate_share": 0.6},
        {"jitter": 2.0},
        {"namespaces": []},
    ],
)
def test_invalid_config_is_refused(kwargs: dict[str, Any]) -> None:
    with pytest.raises(ValueError):  # noqa: PT011
        SimulatorConfig(**kwargs)


# --- command line ---------------------------------------------------------------------


def parse(*argv: str) -> argparse.Namespace:
    parser = argparse.ArgumentParser()
    add_arguments(parser)
    return parser.parse_args(argv)


def test_cli_defaults() -> None:
    args = parse()
    assert getattr(args, "kubeconfig", None) is None
    assert config_from_args(args) == SimulatorConfig(
        provision_seconds=1.0, run_seconds=3.0, fail_share=0.0, terminate_share=0.0, seed=0,
        namespaces=None, jitter=0.2,
    )  # fmt: skip


def test_cli_flags() -> None:
    args = parse(
        "-n", "a", "--namespace", "b", "--provision-seconds", "0.2", "--run-seconds", "0.5",
        "--fail-share", "0.1", "--terminate-share", "0.2", "--seed", "17", "--jitter", "0",
        "--kubeconfig", "/tmp/kc",
    )  # fmt: skip
    assert args.kubeconfig == "/tmp/kc"
    assert config_from_args(args) == SimulatorConfig(
        provision_seconds=0.2, run_seconds=0.5, fail_share=0.1, terminate_share=0.2, seed=17,
        namespaces=["a", "b"], jitter=0.0,
    )  # fmt: skip
    assert config_from_args(parse("-A")).namespaces is None
    assert config_from_args(parse("--seed", "demo")).seed == "demo"


@pytest.mark.parametrize(
    "argv",
    [("--fail-share", "2"), ("--run-seconds", "-1"), ("--jitter", "x"), ("-A", "-n", "a")],
)
def test_cli_refuses_bad_flags(argv: tuple[str, ...]) -> None:
    with pytest.raises(SystemExit):
        parse(*argv)


# --- the driver, against a fake API ---------------------------------------------------


class FakeCustom:
    def __init__(self, api: FakeKube) -> None:
        self.api = api

    async def get_namespaced_custom_object(
        self, group: str, version: str, namespace: str, plural: str, name: str
    ) -> dict[str, Any]:
        if self.api.executor is None:
            raise NotFound(name)
        return self.api.executor


class FakeKube:
    """Just what the simulator's driver calls."""

    def __init__(self, executor: dict[str, Any] | None, job: dict[str, Any] | None) -> None:
        self.executor = executor
        self.job = job
        self.custom = FakeCustom(self)
        self.writes: list[dict[str, Any]] = []
        self.refuse: Exception | None = None

    async def get_job_raw(self, namespace: str, name: str) -> dict[str, Any]:
        if self.job is None:
            raise NotFound(name)
        return self.job

    async def patch_executor_status(
        self, namespace: str, name: str, status: dict[str, Any]
    ) -> None:
        if self.executor is None:
            raise NotFound(name)
        if self.refuse is not None:
            raise self.refuse
        self.writes.append(status)
        self.executor["status"] = {k: v for k, v in status.items() if v is not None}


def executor(phase: str | None = None, uid: str = UID) -> dict[str, Any]:
    return {
        "metadata": {"name": "job-executor-x", "namespace": "ns", "uid": uid},
        "spec": {"jobRef": {"name": "nightly", "uid": "job-uid"}, "attempt": 1},
        "status": {"phase": phase} if phase else {},
    }


def job(annotations: dict[str, str] | None = None, uid: str = "job-uid") -> dict[str, Any]:
    return {
        "metadata": {"name": "nightly", "uid": uid, "annotations": annotations or {}},
        "spec": {"type": "materialize-view", "input": {"dataset_id": 5}},
    }


FAST = SimulatorConfig(provision_seconds=0.0, run_seconds=0.0, jitter=0.0)


async def drive(fake: FakeKube, config: SimulatorConfig = FAST) -> list[str]:
    simulator = Simulator(config, cast(Kube, fake))
    obj = fake.executor or executor()
    await simulator.drive(UID, _Driver("ns", "job-executor-x"), obj)
    return [w["phase"] for w in fake.writes]


async def test_driver_runs_a_new_executor_through_its_plan() -> None:
    fake = FakeKube(executor(), job())
    assert await drive(fake) == ["Provisioning", "Running", "Succeeded"]
    assert fake.writes[-1]["result"] == plan(FAST, UID, job_input={"dataset_id": 5}).result


async def test_driver_continues_from_the_current_phase() -> None:
    fake = FakeKube(executor("Running"), job())
    assert await drive(fake) == ["Succeeded"]
    fake = FakeKube(executor("Provisioning"), job())
    assert await drive(fake) == ["Running", "Succeeded"]


@pytest.mark.parametrize("phase", ["Succeeded", "Failed", "Terminated"])
async def test_driver_leaves_terminal_executors_alone(phase: str) -> None:
    fake = FakeKube(executor(phase), job())
    assert await drive(fake) == []


async def test_driver_reads_overrides_from_the_owning_job() -> None:
    fake = FakeKube(executor(), job({names.SIMULATE_OUTCOME_ANNOTATION: "terminate"}))
    assert await drive(fake) == ["Provisioning", "Running", "Terminated"]
    fake = FakeKube(executor(), job({names.SIMULATE_OUTCOME_ANNOTATION: "hang"}))
    assert await drive(fake) == ["Provisioning", "Running"]


async def test_driver_ignores_a_job_that_is_not_the_owner() -> None:
    other = job({names.SIMULATE_OUTCOME_ANNOTATION: "fail"}, uid="another-uid")
    assert await drive(FakeKube(executor(), other)) == ["Provisioning", "Running", "Succeeded"]
    assert await drive(FakeKube(executor(), None)) == ["Provisioning", "Running", "Succeeded"]


async def test_driver_ends_quietly_when_the_executor_is_gone() -> None:
    assert await drive(FakeKube(None, job())) == []


async def test_driver_survives_a_refused_write(caplog: pytest.LogCaptureFixture) -> None:
    fake = FakeKube(executor(), job())
    fake.refuse = ApiException(status=422, reason="Invalid")
    with caplog.at_level(logging.WARNING, logger="job_operator.simulator"):
        assert await drive(fake) == []
    assert "cannot write its status" in caplog.text


async def test_observe_starts_one_driver_per_executor_and_stops_it() -> None:
    slow = SimulatorConfig(provision_seconds=60.0, jitter=0.0)
    fake = FakeKube(executor(), job())
    simulator = Simulator(slow, cast(Kube, fake))
    simulator.observe(executor())
    simulator.observe(executor())  # the same executor again: no second driver
    assert list(simulator.drivers) == [UID]
    task = simulator.drivers[UID].task
    assert task is not None
    simulator.observe({**executor("Terminated")})  # finished by someone else
    assert simulator.drivers == {}
    with pytest.raises(asyncio.CancelledError):
        await task
    assert task.cancelled()
    simulator.observe(executor("Failed"))  # terminal: nothing to drive
    assert simulator.drivers == {}
    simulator.observe(executor())
    await simulator.close()
    assert simulator.drivers == {}
