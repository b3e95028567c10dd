"""The HTTP API's pure parts: the patch it writes, its tokens, field managers, and the
refusal to serve bearer tokens over plain HTTP on a network."""

from __future__ import annotations

import pytest

from job_operator import names
from job_operator.api import plan
from job_operator.api.server import ServeError, check_transport
from job_operator.models import TOKEN_MAX_LENGTH
from tests.unit.factories import JOB_UID, make_job


def test_the_patch_tests_the_uid_and_adds_only_the_request_annotations() -> None:
    job = make_job(annotations={"team": "data"})
    assert plan.patch_for(job, "t1", force=True) == [
        {"op": "test", "path": "/metadata/uid", "value": JOB_UID},
        {"op": "add", "path": "/metadata/annotations/job-operator.dev~1reschedule", "value": "t1"},
        {
            "op": "add",
            "path": "/metadata/annotations/job-operator.dev~1reschedule-force",
            "value": "t1",
        },
    ]


def test_without_annotations_the_map_is_written_only_on_the_version_read() -> None:
    job = make_job(annotations={})
    operations = plan.patch_for(job, "t1", force=False)
    assert {"op": "test", "path": "/metadata/resourceVersion", "value": "1"} in operations
    assert operations[-1] == {
        "op": "add",
        "path": "/metadata/annotations",
        "value": {names.RESCHEDULE_ANNOTATION: "t1"},
    }


def test_json_pointer_escapes() -> None:
    assert plan.pointer("a/b", "c~d") == "/a~1b/c~0d"


def test_tokens_are_fresh_and_valid_annotation_values() -> None:
    tokens = {plan.new_token() for _ in range(1000)}
    assert len(tokens) == 1000
    assert all(0 < len(t) <= TOKEN_MAX_LENGTH for t in tokens)


def test_the_field_manager_names_the_caller_within_the_api_limit() -> None:
    assert plan.field_manager("alice") == "job-operator-api:alice"
    assert plan.field_manager("") == "job-operator-api"
    assert len(plan.field_manager("x" * 500)) == 128


@pytest.mark.parametrize(
    ("address", "cert", "key", "insecure", "tls"),
    [
        ("127.0.0.1", None, None, False, False),
        ("::1", None, None, False, False),
        ("localhost", None, None, False, False),
        ("0.0.0.0", "c.pem", "k.pem", False, True),
        ("0.0.0.0", None, None, True, False),
        ("127.0.0.1", "c.pem", "k.pem", False, True),
    ],
)
def test_transport(
    address: str, cert: str | None, key: str | None, insecure: bool, tls: bool
) -> None:
    assert check_transport(address, cert, key, insecure) is tls


@pytest.mark.parametrize(
    ("address", "cert", "key"),
    [("0.0.0.0", None, None), ("10.0.0.5", None, None), ("::", None, None), ("0.0.0.0", "c", None)],
)
def test_plain_http_on_a_network_is_refused(
    address: str, cert: str | None, key: str | None
) -> None:
    with pytest.raises(ServeError):
        check_transport(address, cert, key, insecure=False)
