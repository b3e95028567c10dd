"""`job-operator api` against the real API server, operator and simulator: the caller's
bearer token makes the write, the operator's outcome is the answer.

The API runs as the real program, under a read-only identity of its own (the
ServiceAccount job-operator-api with deploy/'s role, where the server enforces RBAC).
Callers are service accounts with tokens, so the tests also run on any cluster.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path

import pytest
import yaml

from job_operator import names
from testenv.controlplane import Identity
from tests.helpers import Kube
from tests.identities import IdentityMinter
from tests.integration.api_support import Api, make_api
from tests.integration.conftest import Jobs, Operator, Process

__all__ = ["make_api"]  # the fixture, for pytest

API_RBAC = Path(__file__).resolve().parents[2] / "deploy" / "base" / "api-rbac.yaml"


def rbac_enforced(kube: Kube) -> bool:
    found = kube.kubectl_run("api-resources", "--api-group=rbac.authorization.k8s.io", "-o", "name")
    return "rolebindings" in found.stdout


def whoami_served(kube: Kube) -> bool:
    """Whether the server answers SelfSubjectReviews (the API learns the caller's name so)."""
    return kube.kubectl_run("auth", "whoami", check=False).returncode == 0


def bind(kube: Kube, namespace: str, role: str, account: str, cluster_role: bool = True) -> None:
    """A RoleBinding of `role` (a ClusterRole) to the service account, in `namespace`."""
    if rbac_enforced(kube):
        kube.kubectl_run(
            "create", "rolebinding", f"{account}-{role}", "-n", namespace,
            f"--clusterrole={role}", f"--serviceaccount={namespace}:{account}",
        )  # fmt: skip


@pytest.fixture
def user(kube: Kube, mint_identity: IdentityMinter, namespace: str) -> Callable[[str], Identity]:
    # Until the suite's server enforces RBAC, only system:masters may do anything there.
    groups = () if rbac_enforced(kube) or kube.control_plane is None else ("system:masters",)

    def make(account: str) -> Identity:
        return mint_identity(f"system:serviceaccount:{namespace}:{account}", groups)

    return make


@pytest.fixture
def editor(kube: Kube, namespace: str, user: Callable[[str], Identity]) -> Identity:
    made = user("alice")
    bind(kube, namespace, "job-operator-edit", "alice")
    return made


@pytest.fixture
def api(
    kube: Kube, namespace: str, user: Callable[[str], Identity], make_api: Callable[..., Api]
) -> Api:
    """The API under its own read-only identity (deploy/'s role, bound in this namespace)."""
    own = user("job-operator-api")
    if rbac_enforced(kube):
        (role,) = [
            d for d in yaml.safe_load_all(API_RBAC.read_text()) if d["kind"] == "ClusterRole"
        ]
        kube.kubectl_run("apply", "-f", "-", input=yaml.safe_dump(role))
        bind(kube, namespace, "job-operator-api", "job-operator-api")
    made = make_api("-n", namespace, kubeconfig=own.kubeconfig)
    made.start_and_wait()
    return made


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
