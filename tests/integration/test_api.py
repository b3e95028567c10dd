"""`job-operator api` against the real API server, operator and simulator: the caller's
bearer token makes the write, the operator's outcome is the answer.

The API runs as the real program, under a read-only identity of its own (the
ServiceAccount job-operator-api with deploy/'s role, where the server enforces RBAC).
Callers are service accounts with tokens, so the tests also run on any cluster.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest

from job_operator import names
from testenv.controlplane import Identity
from tests.helpers import Kube
from tests.integration.api_support import (
    Api,
    api,
    api_identity,
    editor,
    make_api,
    rbac_served,
    user,
    whoami_served,
)
from tests.integration.conftest import Installed, Jobs, Operator, Process

__all__ = ["api", "api_identity", "editor", "make_api", "user"]  # fixtures, for pytest


def uid_of(jobs: Jobs, name: str) -> str:
    uid: str = jobs.get(name)["metadata"]["uid"]
    return uid


def test_no_token_or_a_bad_one_is_401_and_writes_nothing(api: Api, jobs: Jobs) -> None:
    jobs.create("nightly")
    path = f"/v1/namespaces/{jobs.namespace}/jobs/nightly/reschedule"
    for token in (None, "not-a-token"):
        answer = api.call("POST", path, token)
        assert answer.status == 401, answer
        assert answer.headers["www-authenticate"] == "Bearer"
        assert answer.body["error"]
    assert names.RESCHEDULE_ANNOTATION not in jobs.get("nightly")["metadata"].get("annotations", {})


def test_an_editor_reschedules_by_uid_and_by_name(
    api: Api, jobs: Jobs, editor: Identity, operator: Operator, simulator: Process, kube: Kube
) -> None:
    jobs.create("nightly", annotations={names.SIMULATE_OUTCOME_ANNOTATION: "hang"})
    before = jobs.wait_running("nightly")
    uid = uid_of(jobs, "nightly")

    answer = api.call("POST", f"/v1/jobs/{uid}/reschedule", editor.token)
    assert answer.status == 200, answer
    body = answer.body
    assert body["outcome"] == "rescheduled"
    assert body["job_id"] == uid and body["type"] == "materialize-view"
    assert body["executor"] and body["executor"] != before["executor"]  # a fresh one
    assert body["input"] == {"dataset_id": 10736}
    status = jobs.status("nightly")
    token = answer.headers["idempotency-key"]
    assert status["reschedule"]["request"] == token
    named = f"{names.API_FIELD_MANAGER}:{editor.name}" if whoami_served(kube) else None
    assert status["reschedule"]["requestedBy"] == (named or names.API_FIELD_MANAGER)
    assert [h["executor"] for h in status["history"]] == [before["executor"]]

    again = api.call(
        "POST", f"/v1/namespaces/{jobs.namespace}/jobs/nightly/reschedule", editor.token, {}
    )
    assert again.status == 200, again
    assert again.body["outcome"] == "rescheduled"
    assert again.body["executor"] not in (before["executor"], body["executor"])

    shown = api.call("GET", f"/v1/jobs/{uid}", editor.token)
    assert shown.status == 200 and shown.body["job_id"] == uid and "outcome" not in shown.body


def test_a_terminal_job_is_skipped_alike_for_every_empty_body_and_forced_reruns(
    api: Api, jobs: Jobs, editor: Identity, operator: Operator, simulator: Process
) -> None:
    jobs.create("done")
    finished = jobs.wait_state("done", "completed")
    path = f"/v1/namespaces/{jobs.namespace}/jobs/done/reschedule"
    for raw in (None, b"{}", b'{"force": false}'):
        answer = api.call("POST", path, editor.token, raw=raw)
        assert answer.status == 200, answer
        assert answer.body["outcome"] == "skipped_terminal"
        assert answer.body["state"] == "completed"
        assert answer.body["executor"] == finished["executor"]
    assert jobs.status("done")["attempt"] == finished["attempt"]

    forced = api.call("POST", path, editor.token, {"force": True})
    assert forced.status == 200, forced
    assert forced.body["outcome"] == "rescheduled"
    assert forced.body["executor"] != finished["executor"]
    assert jobs.status("done")["history"][-1]["state"] == "completed"


def test_one_key_reschedules_once_across_an_operator_outage(
    api: Api,
    jobs: Jobs,
    editor: Identity,
    make_operator: Callable[..., Operator],
    simulator: Process,
) -> None:
    operator = make_operator()
    operator.start_and_wait()
    jobs.create("nightly", annotations={names.SIMULATE_OUTCOME_ANNOTATION: "hang"})
    jobs.wait_running("nightly")
    operator.stop()
    path = f"/v1/namespaces/{jobs.namespace}/jobs/nightly/reschedule?timeoutSeconds=1"
    key = {"Idempotency-Key": "2026-12-02T01:00:00Z"}

    timed_out = api.call("POST", path, editor.token, headers=key)
    assert timed_out.status == 504, timed_out
    assert timed_out.body["token"] == key["Idempotency-Key"]
    assert key["Idempotency-Key"] in timed_out.body["error"]

    operator.start_and_wait()
    first = api.call("POST", path.replace("=1", "=60"), editor.token, headers=key)
    assert first.status == 200, first
    assert first.body["outcome"] == "rescheduled"
    second = api.call("POST", path, editor.token, headers=key)
    assert second.status == 200, second
    assert second.body["executor"] == first.body["executor"]
    assert len(jobs.status("nightly")["history"]) == 1  # rescheduled once

    other_force = api.call("POST", path, editor.token, {"force": True}, headers=key)
    assert other_force.status == 422, other_force
    assert len(jobs.status("nightly")["history"]) == 1


def test_a_recreated_job_is_not_touched_by_a_request_for_the_old_uid(
    api: Api, jobs: Jobs, editor: Identity, kube: Kube
) -> None:
    jobs.create("nightly")
    old = uid_of(jobs, "nightly")
    kube.kubectl_run("delete", "ojob", "nightly", "-n", jobs.namespace, "--wait=true")
    jobs.create("nightly")
    assert uid_of(jobs, "nightly") != old

    answer = api.call("POST", f"/v1/jobs/{old}/reschedule?wait=false", editor.token)
    assert answer.status == 404, answer
    assert old in answer.body["error"]
    annotations = jobs.get("nightly")["metadata"].get("annotations") or {}
    assert names.RESCHEDULE_ANNOTATION not in annotations


def test_bad_input_gets_a_clear_error_and_changes_nothing(
    api: Api, jobs: Jobs, editor: Identity
) -> None:
    jobs.create("nightly")
    path = f"/v1/namespaces/{jobs.namespace}/jobs/nightly/reschedule"
    cases = [
        (b"{not json", 400),
        (b'{"force": true, "extra": 1}', 422),
        (b'{"force": "yes"}', 422),
        (json.dumps({"force": False, "pad": "x" * 8192}).encode(), 413),
    ]
    for raw, status in cases:
        answer = api.call("POST", path, editor.token, raw=raw)
        assert answer.status == status, (raw[:40], answer)
        assert answer.body["error"]
    unknown = api.call(
        "POST", f"/v1/namespaces/{jobs.namespace}/jobs/nobody/reschedule", editor.token
    )
    assert unknown.status == 404, unknown
    assert api.call("POST", "/v1/jobs/not-a-uuid/reschedule", editor.token).status == 422
    annotations = jobs.get("nightly")["metadata"].get("annotations") or {}
    assert names.RESCHEDULE_ANNOTATION not in annotations


# --- who may: RBAC enforced by the API server ------------------------------------------------


def job_writes(kube: Kube, namespace: str, name: str) -> list[tuple[str, int]]:
    """(user, status) of every write of the job itself (not its status) in the audit log."""
    assert kube.control_plane is not None and kube.control_plane.audit_log is not None
    found = []
    for line in kube.control_plane.audit_log.read_text().splitlines():
        event: dict[str, Any] = json.loads(line)
        ref = event.get("objectRef") or {}
        if (
            event.get("stage") == "ResponseComplete"
            and event.get("verb") in ("patch", "update")
            and (ref.get("resource"), ref.get("namespace"), ref.get("name"))
            == (names.JOB_PLURAL, namespace, name)
            and not ref.get("subresource")
        ):
            found.append((event["user"]["username"], event["responseStatus"]["code"]))
    return found


@pytest.fixture
def viewer(user: Callable[[str, str], Identity], installed: Installed) -> Identity:
    if not rbac_served(installed):
        pytest.skip("the server serves no RBAC: every identity is an administrator")
    return user("bob", "job-operator-view")


def refused_to(viewer: Identity, api: Api, jobs: Jobs) -> None:
    """The viewer's reschedule is refused (403, the API server's reason) and not written;
    reading is theirs."""
    path = f"/v1/namespaces/{jobs.namespace}/jobs/nightly/reschedule"
    for headers in ({}, {"Idempotency-Key": "k1"}):
        answer = api.call("POST", path, viewer.token, {"force": True}, headers=headers)
        assert answer.status == 403, answer
        assert viewer.name in answer.body["error"] and "patch" in answer.body["error"]
    annotations = jobs.get("nightly")["metadata"].get("annotations") or {}
    assert names.RESCHEDULE_ANNOTATION not in annotations
    assert (
        api.call("GET", f"/v1/namespaces/{jobs.namespace}/jobs/nightly", viewer.token).status == 200
    )


def test_a_reader_is_403_and_nothing_is_written(
    api: Api, jobs: Jobs, viewer: Identity, kube: Kube
) -> None:
    jobs.create("nightly")
    refused_to(viewer, api, jobs)
    if kube.control_plane is not None:
        writes = job_writes(kube, jobs.namespace, "nightly")
        assert writes and {code for _, code in writes} == {403}, writes  # refused, recorded
        assert {who for who, _ in writes} == {viewer.name}


def test_the_write_never_falls_back_to_the_servers_own_identity(
    make_api: Callable[..., Api], jobs: Jobs, viewer: Identity, kube: Kube, editor: Identity
) -> None:
    """Even a server that runs as an administrator writes nothing for a viewer, or for a
    request without a token: the write is the caller's, or none."""
    admin_run = make_api("-n", jobs.namespace, kubeconfig=kube.kubeconfig)
    admin_run.start_and_wait()
    jobs.create("nightly")
    refused_to(viewer, admin_run, jobs)
    path = f"/v1/namespaces/{jobs.namespace}/jobs/nightly/reschedule?wait=false"
    assert admin_run.call("POST", path).status == 401
    assert admin_run.call("POST", path, "not-a-token").status == 401
    assert admin_run.call("POST", path, editor.token).status == 202  # the editor's own write
    if kube.control_plane is not None:
        writes = job_writes(kube, jobs.namespace, "nightly")
        assert {(who, code) for who, code in writes if code < 400} == {(editor.name, 200)}
