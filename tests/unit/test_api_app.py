"""The HTTP API's application against an in-memory cluster (tests/unit/api_fakes.py):
statuses, bodies, idempotency, limits, the OpenAPI document. The same behaviour against
a real API server, operator and RBAC: tests/integration/test_api.py."""

from __future__ import annotations

import copy
import json
import logging
from collections.abc import Iterator
from typing import Any, cast

import pytest
from fastapi.testclient import TestClient
from openapi_spec_validator import validate

from job_operator import names
from job_operator.api.app import Settings, create_app
from job_operator.api.waiting import JobIndex
from job_operator.kube import Kube
from job_operator.models import Job
from tests.unit.api_fakes import EDITOR, VIEWER, FakeCluster, ServerReader, raw_job

UID = "4d6c2f71-3f7a-4a57-9a0e-1b2f3c4d5e6f"
OTHER_UID = "9a1b2c3d-4e5f-4a6b-8c7d-0e1f2a3b4c5d"
BY_UID = f"/v1/jobs/{UID}/reschedule"
BY_NAME = "/v1/namespaces/data/jobs/nightly/reschedule"
AS_EDITOR = {"Authorization": f"Bearer {EDITOR}"}
AS_VIEWER = {"Authorization": f"Bearer {VIEWER}"}


@pytest.fixture
def cluster() -> FakeCluster:
    index = JobIndex(cast(Kube, object()), max_waiting=2)
    index.synced.set()
    made = FakeCluster(index)
    made.add(raw_job("nightly", UID))
    return made


@pytest.fixture
def client(cluster: FakeCluster) -> Iterator[TestClient]:
    app = create_app(cluster, ServerReader(cluster), cluster.index, Settings(max_body_bytes=64))
    with TestClient(app) as made:
        yield made


def post(client: TestClient, path: str = BY_UID, headers: dict[str, str] | None = None,
         **kwargs: Any) -> Any:  # fmt: skip
    return client.post(path, headers={**AS_EDITOR, **(headers or {})}, **kwargs)


# --- who may ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers", [{}, {"Authorization": "Basic eDp5"}, {"Authorization": "Bearer"}]
)
def test_no_bearer_token_is_401_with_the_challenge(
    client: TestClient, cluster: FakeCluster, headers: dict[str, str]
) -> None:
    response = client.post(BY_UID, headers=headers)
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert "bearer token" in response.json()["error"]
    assert cluster.writes == []


def test_a_token_the_api_server_refuses_is_401(client: TestClient, cluster: FakeCluster) -> None:
    response = client.post(BY_UID, headers={"Authorization": "Bearer not-a-token"})
    assert response.status_code == 401
    assert response.headers["WWW-Authenticate"] == "Bearer"
    assert cluster.writes == []


def test_a_reader_is_403_naming_the_refusal_and_nothing_is_written(
    client: TestClient, cluster: FakeCluster
) -> None:
    response = client.post(BY_UID, headers=AS_VIEWER)
    assert response.status_code == 403
    assert "bob" in response.json()["error"]
    assert cluster.writes == []
    assert cluster.jobs[("data", "nightly")]["status"]["state"] == "running"


def test_a_reader_repeating_a_handled_key_is_403_too(
    client: TestClient, cluster: FakeCluster
) -> None:
    assert post(client, headers={"Idempotency-Key": "k1"}).status_code == 200
    response = client.post(BY_UID, headers={**AS_VIEWER, "Idempotency-Key": "k1"})
    assert response.status_code == 403
    assert len(cluster.writes) == 1


def test_an_unknown_name_is_403_for_who_may_not_write_there(client: TestClient) -> None:
    path = "/v1/namespaces/data/jobs/nobody/reschedule"
    assert client.post(path, headers=AS_VIEWER).status_code == 403
    assert post(client, path).status_code == 404


# --- the operation ----------------------------------------------------------------------


def test_reschedule_answers_the_outcome_and_the_job_afterwards(
    client: TestClient, cluster: FakeCluster
) -> None:
    response = post(client)
    assert response.status_code == 200, response.text
    body = response.json()
    assert body["outcome"] == "rescheduled"
    assert body["job_id"] == UID
    assert body["state"] == "pending"
    assert set(body) == {
        "outcome", "job_id", "state", "type", "input", "executor", "data_plane_id",
        "request_source", "idempotency_key", "result", "created_at", "updated_at", "ended_at",
    }  # fmt: skip
    token = response.headers["Idempotency-Key"]
    ((_, operations, manager),) = cluster.writes
    assert manager == f"{names.API_FIELD_MANAGER}:alice"
    assert operations[0] == {"op": "test", "path": "/metadata/uid", "value": UID}
    annotations = cluster.jobs[("data", "nightly")]["metadata"]["annotations"]
    assert annotations == {names.RESCHEDULE_ANNOTATION: token}


def test_by_name_is_the_same_operation(client: TestClient, cluster: FakeCluster) -> None:
    response = post(client, BY_NAME)
    assert response.status_code == 200
    assert response.json()["job_id"] == UID
    assert len(cluster.writes) == 1


@pytest.mark.parametrize("body", [None, {}, {"force": False}])
def test_empty_body_empty_object_and_force_false_alike(
    client: TestClient, cluster: FakeCluster, body: dict[str, Any] | None
) -> None:
    cluster.jobs[("data", "nightly")]["status"]["state"] = "completed"
    response = post(client, json=body) if body is not None else post(client)
    assert response.status_code == 200
    assert response.json()["outcome"] == "skipped_terminal"
    annotations = cluster.jobs[("data", "nightly")]["metadata"]["annotations"]
    assert names.RESCHEDULE_FORCE_ANNOTATION not in annotations


def test_force_reruns_a_terminal_job(client: TestClient, cluster: FakeCluster) -> None:
    cluster.jobs[("data", "nightly")]["status"]["state"] = "completed"
    response = post(client, json={"force": True})
    assert response.status_code == 200
    assert response.json()["outcome"] == "rescheduled"
    annotations = cluster.jobs[("data", "nightly")]["metadata"]["annotations"]
    token = response.headers["Idempotency-Key"]
    assert annotations[names.RESCHEDULE_FORCE_ANNOTATION] == token


def test_an_existing_annotation_map_is_added_to_not_replaced(
    client: TestClient, cluster: FakeCluster
) -> None:
    cluster.add(raw_job("tagged", OTHER_UID, team="data"))
    assert post(client, f"/v1/jobs/{OTHER_UID}/reschedule").status_code == 200
    annotations = cluster.jobs[("data", "tagged")]["metadata"]["annotations"]
    assert annotations["team"] == "data"


# --- idempotency ------------------------------------------------------------------------


def test_the_same_key_twice_reschedules_once(client: TestClient, cluster: FakeCluster) -> None:
    first = post(client, headers={"Idempotency-Key": "2026-12-01T10:00:00Z"})
    second = post(client, headers={"Idempotency-Key": "2026-12-01T10:00:00Z"})
    assert first.status_code == second.status_code == 200
    assert first.json() == second.json()
    assert second.headers["Idempotency-Key"] == "2026-12-01T10:00:00Z"
    assert len(cluster.writes) == 1


def test_the_same_key_with_another_force_is_422(client: TestClient, cluster: FakeCluster) -> None:
    assert post(client, headers={"Idempotency-Key": "k"}).status_code == 200
    response = post(client, headers={"Idempotency-Key": "k"}, json={"force": True})
    assert response.status_code == 422
    assert "force" in response.json()["error"]
    assert len(cluster.writes) == 1


def test_a_pending_key_is_waited_for_not_written_again(
    client: TestClient, cluster: FakeCluster
) -> None:
    cluster.operator_running = False
    first = post(client, params={"timeoutSeconds": 0.05}, headers={"Idempotency-Key": "k"})
    assert first.status_code == 504
    second = post(client, params={"timeoutSeconds": 0.05}, headers={"Idempotency-Key": "k"})
    assert second.status_code == 504
    assert len(cluster.writes) == 1


@pytest.mark.parametrize("key", ["", "x" * 257, "has space", "ünïcode"])
def test_an_invalid_key_is_422(client: TestClient, cluster: FakeCluster, key: str) -> None:
    headers = [(b"Authorization", f"Bearer {EDITOR}".encode()), (b"Idempotency-Key", key.encode())]
    response = client.post(BY_UID, headers=headers)
    assert response.status_code == 422
    assert cluster.writes == []


# --- waiting ----------------------------------------------------------------------------


def test_timeout_is_504_naming_the_token(client: TestClient, cluster: FakeCluster) -> None:
    cluster.operator_running = False
    response = post(client, params={"timeoutSeconds": 0.05})
    assert response.status_code == 504
    token = response.json()["token"]
    assert token in response.json()["error"]
    assert cluster.jobs[("data", "nightly")]["metadata"]["annotations"] == {
        names.RESCHEDULE_ANNOTATION: token
    }
    cluster.handle("data", "nightly", "operator-back")
    again = post(client, headers={"Idempotency-Key": token})
    assert again.status_code == 200
    assert again.json()["outcome"] == "rescheduled"
    assert len(cluster.writes) == 1


def test_no_wait_is_202_with_the_token(client: TestClient, cluster: FakeCluster) -> None:
    cluster.operator_running = False
    response = post(client, params={"wait": "false"})
    assert response.status_code == 202
    body = response.json()
    assert body["job_id"] == UID and (body["namespace"], body["name"]) == ("data", "nightly")
    annotations = cluster.jobs[("data", "nightly")]["metadata"]["annotations"]
    assert annotations[names.RESCHEDULE_ANNOTATION] == body["token"]


def test_waiting_requests_are_bounded(client: TestClient, cluster: FakeCluster) -> None:
    cluster.operator_running = False
    cluster.index.waiting = cluster.index.max_waiting  # as if that many were waiting now
    response = post(client)
    assert response.status_code == 429
    assert response.headers["Retry-After"] == "1"
    assert cluster.writes == []


# --- a job replaced under its name --------------------------------------------------------


def test_a_recreated_job_is_not_touched_by_a_request_for_the_old_uid(
    client: TestClient, cluster: FakeCluster
) -> None:
    cluster.jobs[("data", "nightly")]["metadata"]["uid"] = OTHER_UID  # deleted, re-created
    response = post(client)
    assert response.status_code == 404
    assert UID in response.json()["error"]
    assert cluster.writes == []


def test_a_job_replaced_between_read_and_write_is_not_touched(cluster: FakeCluster) -> None:
    stale = Job.model_validate(copy.deepcopy(cluster.jobs[("data", "nightly")]))
    reads: list[Job] = [stale]

    class RacingReader(ServerReader):
        """Reads the job once before it is replaced, then as it is."""

        async def get_job(self, namespace: str, name: str) -> Job:
            return reads.pop() if reads else await super().get_job(namespace, name)

    cluster.jobs[("data", "nightly")]["metadata"]["uid"] = OTHER_UID  # deleted, re-created
    app = create_app(cluster, RacingReader(cluster), cluster.index)
    with TestClient(app) as client:
        response = post(client, BY_NAME)
    assert response.status_code == 404  # meant for the job as read, even by name
    assert "another job" in response.json()["error"]
    assert cluster.writes == []  # the uid test refused the write
    assert reads == []


# --- bad input ----------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("content", "status"),
    [
        (b"{not json", 400),
        (b'{"force": true, "extra": 1}', 422),
        (b'{"force": "yes"}', 422),
        (b'{"force": 1}', 422),
        (b"[]", 422),
        (b'{"force": false, "padding": "' + b"x" * 100 + b'"}', 413),
    ],
)
def test_bad_bodies_change_nothing(
    client: TestClient, cluster: FakeCluster, content: bytes, status: int
) -> None:
    response = post(client, content=content, headers={"Content-Type": "application/json"})
    assert response.status_code == status, response.text
    assert response.json()["error"]
    assert cluster.writes == []


@pytest.mark.parametrize(
    ("path", "status"),
    [
        ("/v1/jobs/not-a-uuid/reschedule", 422),
        (f"/v1/jobs/{OTHER_UID}/reschedule", 404),
        ("/v1/namespaces/Bad_NS/jobs/nightly/reschedule", 422),
        ("/v1/nowhere", 404),
    ],
)
def test_bad_paths(client: TestClient, cluster: FakeCluster, path: str, status: int) -> None:
    response = post(client, path)
    assert response.status_code == status
    assert response.json()["error"]
    assert cluster.writes == []


# --- reads, probes, metrics, document --------------------------------------------------------


def test_get_returns_the_seed_job_shape(client: TestClient) -> None:
    by_uid = client.get(f"/v1/jobs/{UID}", headers=AS_VIEWER)
    by_name = client.get("/v1/namespaces/data/jobs/nightly", headers=AS_VIEWER)
    assert by_uid.status_code == by_name.status_code == 200
    assert by_uid.json() == by_name.json()
    assert by_uid.json()["job_id"] == UID and "outcome" not in by_uid.json()
    assert client.get(f"/v1/jobs/{UID}").status_code == 401


def test_metrics_count_by_route_status_and_outcome(client: TestClient) -> None:
    post(client)
    text = client.get("/metrics").text
    assert (
        'job_operator_api_requests_total{outcome="rescheduled",'
        'route="/v1/jobs/{job_id}/reschedule",status="200"}'
    ) in text
    assert "job_operator_api_requests_waiting 0.0" in text


def test_readyz_waits_for_the_job_index(client: TestClient, cluster: FakeCluster) -> None:
    assert client.get("/readyz").status_code == 200
    cluster.index.synced.clear()
    assert client.get("/readyz").status_code == 503
    assert post(client).status_code == 503


def test_the_openapi_document_is_valid_and_describes_the_operation(client: TestClient) -> None:
    document = client.get("/openapi.json").json()
    validate(document)
    operation = document["paths"]["/v1/jobs/{job_id}/reschedule"]["post"]
    assert {"200", "202", "400", "401", "403", "404", "413", "422", "429", "504"} <= set(
        operation["responses"]
    )
    assert operation["security"] == [{"HTTPBearer": []}]
    assert document["components"]["securitySchemes"]["HTTPBearer"]["scheme"] == "bearer"
    result = document["components"]["schemas"]["RescheduleResult"]
    assert result["properties"]["outcome"]["enum"] == ["rescheduled", "skipped_terminal"]


def test_tokens_are_never_logged(client: TestClient, caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.DEBUG)
    post(client)
    client.post(BY_UID, headers={"Authorization": "Bearer not-a-token"})
    logged = json.dumps([r.getMessage() for r in caplog.records])
    assert EDITOR not in logged and "not-a-token" not in logged
