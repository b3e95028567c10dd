"""Property-based fuzzing of what users write: annotation values and Job manifests.

Whatever arrives, the operator never crashes, never meets an unexpected error (its error
counter stays at zero) and never changes a job it should not.
"""

from __future__ import annotations

import hashlib
import itertools
from collections.abc import AsyncIterator
from typing import Any

import pytest
from hypothesis import HealthCheck, assume, given, settings
from hypothesis import strategies as st
from kubernetes_asyncio.client.exceptions import ApiException

from job_operator import names
from job_operator.kube import Kube as Api
from job_operator.kube import NotFound
from tests.helpers import Kube, async_wait_for
from tests.integration.conftest import HANG, Operator, Process

FUZZ = settings(
    max_examples=25,
    deadline=None,
    derandomize=True,
    suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow],
)
counter = itertools.count()

json_values = st.recursive(
    st.none() | st.booleans() | st.integers(-(2**53), 2**53) | st.text(max_size=20),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=8), inner, max_size=3)
    ),
    max_leaves=8,
)


@pytest.fixture
async def api(kube: Kube) -> AsyncIterator[Api]:
    async with Api.connect(str(kube.kubeconfig)) as client:
        yield client


def assert_unharmed(operator: Operator) -> None:
    """The operator still runs and has met no unexpected error: it catches every exception
    and retries, so one that user data raises shows only in its error counter (and as a
    slower decision), never as a crash."""
    assert operator.running()
    errors = operator.errors()
    assert errors == 0, f"{errors:g} unexpected errors; the log ends:\n{operator.log()[-3000:]}"


async def status_of(api: Api, namespace: str, name: str) -> dict[str, Any]:
    raw = await api.get_job_raw(namespace, name)
    status: dict[str, Any] = raw.get("status") or {}
    return status


async def create_running(api: Api, namespace: str, name: str) -> dict[str, Any]:
    await api.custom.create_namespaced_custom_object(
        names.GROUP,
        names.VERSION,
        namespace,
        names.JOB_PLURAL,
        {
            "apiVersion": names.API_VERSION,
            "kind": names.JOB_KIND,
            "metadata": {"name": name, "annotations": HANG},
            "spec": {"type": "fuzz", "input": {}},
        },
    )

    async def running() -> dict[str, Any] | None:
        status = await status_of(api, namespace, name)
        return status if status.get("state") == "running" else None

    result: dict[str, Any] = await async_wait_for(running, timeout=30, description="running")
    return result


@given(
    token=st.text(max_size=300) | st.text(min_size=250, max_size=270),
    force=st.sampled_from(["none", "same", "other"]),
)
@FUZZ
async def test_any_annotation_value_is_handled_refused_or_ignored_never_a_crash(
    api: Api,
    namespace: str,
    operator: Operator,
    simulator: Process,
    token: str,
    force: str,
) -> None:
    name = f"fuzz-a-{next(counter)}"
    before = await create_running(api, namespace, name)
    annotations = {names.RESCHEDULE_ANNOTATION: token}
    if force != "none":
        annotations[names.RESCHEDULE_FORCE_ANNOTATION] = token if force == "same" else "x"
    try:
        await api.annotate_job(namespace, name, annotations, "fuzz")
    except ApiException as error:  # the API server itself refused the value
        assume(error.status not in (400, 422))
        raise
    digest = hashlib.sha256(token.encode()).hexdigest()

    if not token:  # no request: a later, valid one is the barrier
        await api.annotate_job(namespace, name, {names.RESCHEDULE_ANNOTATION: "barrier"}, "f")
        token = "barrier"

    async def decided() -> dict[str, Any] | None:
        status = await status_of(api, namespace, name)
        if (status.get("reschedule") or {}).get("request") == token:
            return status
        if any(r["tokenDigest"] == digest for r in status.get("rejectedRequests", [])):
            return status
        return None

    status = await async_wait_for(decided, timeout=30, description=f"{token!r} decided")
    assert_unharmed(operator)
    if len(token) > 256:
        assert (status["state"], status["executor"], status["attempt"]) == (
            before["state"],
            before["executor"],
            before["attempt"],
        )
        assert status.get("reschedule") is None
    else:
        assert status["reschedule"]["outcome"] == "rescheduled"
        assert status["reschedule"]["force"] is (force == "same" and token != "barrier")
    await api.custom.delete_namespaced_custom_object(
        names.GROUP, names.VERSION, namespace, names.JOB_PLURAL, name
    )


@given(
    spec=st.fixed_dictionaries(
        {"type": st.text(max_size=12) | st.integers()},
        optional={
            "input": st.dictionaries(st.text(max_size=8), json_values, max_size=4) | st.integers(),
            "executorClass": st.text(max_size=10),
            "maxAutoReschedules": st.integers(-3, 5) | st.text(max_size=3),
            "dataPlaneId": st.text(max_size=10) | st.integers(),
            "requestSource": st.fixed_dictionaries(
                {},
                optional={
                    "type": st.text(max_size=6),
                    "companyId": st.integers() | st.text(max_size=4),
                    "userId": st.integers() | st.booleans(),
                },
            ),
            "unknownField": json_values,
        },
    )
)
@FUZZ
async def test_any_manifest_is_refused_by_the_server_or_run_by_the_operator(
    api: Api,
    namespace: str,
    operator: Operator,
    simulator: Process,
    spec: dict[str, Any],
) -> None:
    name = f"fuzz-m-{next(counter)}"
    body = {
        "apiVersion": names.API_VERSION,
        "kind": names.JOB_KIND,
        "metadata": {"name": name},
        "spec": spec,
    }
    try:
        await api.custom.create_namespaced_custom_object(
            names.GROUP, names.VERSION, namespace, names.JOB_PLURAL, body, field_validation="Strict"
        )
    except ApiException as error:
        # refused with a clear error, and nothing made
        assert error.status in (400, 422), error.body  # noqa: PT017
        with pytest.raises(NotFound):
            await api.get_job_raw(namespace, name)
        return

    async def dispatched() -> dict[str, Any] | None:
        status = await status_of(api, namespace, name)
        return status if status.get("attempt", 0) >= 1 else None

    await async_wait_for(dispatched, timeout=30, description="an accepted job dispatched")
    assert_unharmed(operator)
    await api.custom.delete_namespaced_custom_object(
        names.GROUP, names.VERSION, namespace, names.JOB_PLURAL, name
    )
