"""The CRDs: crds/*.yaml are exactly the rendering of the models, and that rendering says
what the models (and docs/reference.md) say.

The schema check compares the rendered OpenAPI schema with pydantic's own JSON schema of
the same models, an independent rendering: every field by its API name, its type, its
enum, its constraints, required or not.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, get_args

import pytest
import yaml
from pydantic import BaseModel

from job_operator import crd, names
from job_operator.models import (
    HISTORY_LIMIT,
    CancelOutcome,
    ConditionStatus,
    ExecutorPhase,
    ExecutorSpec,
    ExecutorStatus,
    HistoryReason,
    JobSpec,
    JobState,
    JobStatus,
    RescheduleOutcome,
)

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"
JOB_FILE = f"{names.JOB_PLURAL}.yaml"
EXECUTOR_FILE = f"{names.EXECUTOR_PLURAL}.yaml"
IMMUTABLE = "self == oldSelf"


def committed() -> dict[str, str]:
    return {path.name: path.read_text() for path in sorted(CRD_DIR.glob("*.yaml"))}


def version(document: dict[str, Any]) -> dict[str, Any]:
    [only] = document["spec"]["versions"]
    assert isinstance(only, dict)
    return only


def root_schema(document: dict[str, Any]) -> dict[str, Any]:
    schema = version(document)["schema"]["openAPIV3Schema"]
    assert isinstance(schema, dict)
    return schema


def at(schema: dict[str, Any], *path: str) -> dict[str, Any]:
    """The schema of a nested property: at(root, "status", "history", "[]", "state")."""
    for step in path:
        schema = schema["items"] if step == "[]" else schema["properties"][step]
    return schema


@pytest.fixture(scope="module")
def job_doc() -> dict[str, Any]:
    document = yaml.safe_load((CRD_DIR / JOB_FILE).read_text())
    assert isinstance(document, dict)
    return document


@pytest.fixture(scope="module")
def executor_doc() -> dict[str, Any]:
    document = yaml.safe_load((CRD_DIR / EXECUTOR_FILE).read_text())
    assert isinstance(document, dict)
    return document


# --- the committed files are the rendering ------------------------------------------------


def test_committed_crds_are_exactly_the_rendering() -> None:
    rendered = crd.rendered()
    assert sorted(rendered) == [EXECUTOR_FILE, JOB_FILE]
    assert committed() == rendered, "crds/ is stale: run `python -m job_operator.crd`"


def test_rendering_is_the_crd_objects() -> None:
    rendered = crd.rendered()
    assert yaml.safe_load(rendered[JOB_FILE]) == crd.job_crd()
    assert yaml.safe_load(rendered[EXECUTOR_FILE]) == crd.executor_crd()


def test_main_writes_the_rendering(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr("sys.argv", ["job_operator.crd", str(tmp_path / "out")])
    crd.main()
    written = {p.name: p.read_text() for p in (tmp_path / "out").iterdir()}
    assert written == crd.rendered()


# --- the rendered schema says what the models say -------------------------------------------


# The schema keywords both shapes keep, to compare the models with the CRDs.
COMPARED_KEYS = (
    "enum",
    "format",
    "minLength",
    "minimum",
    "maxItems",
    "x-kubernetes-validations",
    "x-kubernetes-list-type",
    "x-kubernetes-list-map-keys",
)


def _pydantic_shape(schema: dict[str, Any], defs: dict[str, Any]) -> dict[str, Any]:
    """The parts of a pydantic JSON schema node that a CRD schema must repeat."""
    if "$ref" in schema:
        schema = {**defs[schema["$ref"].rsplit("/", 1)[-1]], **schema}
        del schema["$ref"]
    if "anyOf" in schema:
        options = [o for o in schema["anyOf"] if o != {"type": "null"}]
        outer = {k: v for k, v in schema.items() if k != "anyOf"}
        if sorted(o.get("type", "") for o in options) == ["integer", "string"]:
            return {"type": "int-or-string"}
        [option] = options
        return _pydantic_shape({**outer, **option}, defs)
    shape: dict[str, Any] = {"type": schema["type"]}
    shape.update({key: schema[key] for key in COMPARED_KEYS if key in schema})
    if schema["type"] == "object":
        if "properties" in schema:
            shape["properties"] = {
                name: _pydantic_shape(sub, defs) for name, sub in schema["properties"].items()
            }
            shape["required"] = sorted(schema.get("required", []))
        else:  # dict[str, Any]
            assert schema.get("additionalProperties") is True, schema
            shape["free-form"] = True
    if schema["type"] == "array":
        shape["items"] = _pydantic_shape(schema["items"], defs)
    return shape


def _crd_shape(schema: dict[str, Any]) -> dict[str, Any]:
    """The same parts of a rendered CRD schema node."""
    if schema.get("x-kubernetes-int-or-string"):
        return {"type": "int-or-string"}
    shape: dict[str, Any] = {"type": schema["type"]}
    shape.update({key: schema[key] for key in COMPARED_KEYS if key in schema})
    if schema["type"] == "object":
        if "properties" in schema:
            shape["properties"] = {
                name: _crd_shape(sub) for name, sub in schema["properties"].items()
            }
            shape["required"] = sorted(schema.get("required", []))
        else:
            assert schema.get("x-kubernetes-preserve-unknown-fields") is True, schema
            shape["free-form"] = True
    if schema["type"] == "array":
        shape["items"] = _crd_shape(schema["items"])
    return shape


def _model_shape(model: type[BaseModel]) -> dict[str, Any]:
    schema = model.model_json_schema(by_alias=True, mode="validation")
    return _pydantic_shape(schema, schema.get("$defs", {}))


@pytest.mark.parametrize(
    ("document", "part", "model"),
    [
        (crd.job_crd, "spec", JobSpec),
        (crd.job_crd, "status", JobStatus),
        (crd.executor_crd, "spec", ExecutorSpec),
        (crd.executor_crd, "status", ExecutorStatus),
    ],
    ids=["job-spec", "job-status", "executor-spec", "executor-status"],
)
def test_schema_matches_the_model(document: Any, part: str, model: type[BaseModel]) -> None:
    rendered = _crd_shape(at(root_schema(document()), part))
    expected = _model_shape(model)
    assert sorted(rendered["properties"]) == sorted(expected["properties"])
    for name in expected["properties"]:
        assert rendered["properties"][name] == expected["properties"][name], f"{part}.{name}"
    assert rendered == expected


@pytest.mark.parametrize(
    ("model", "part"),
    [(JobSpec, "spec"), (JobStatus, "status")],
)
def test_every_field_appears_by_its_api_name(model: type[BaseModel], part: str) -> None:
    properties = at(root_schema(crd.job_crd()), part)["properties"]
    for name, field in model.model_fields.items():
        assert field.alias is not None
        assert field.alias in properties, name
        assert "_" not in field.alias  # camelCase, as the API spells it
    assert len(properties) == len(model.model_fields)


def test_contract_fields_are_in_the_job_schema(job_doc: dict[str, Any]) -> None:
    root = root_schema(job_doc)
    assert root["required"] == ["spec"]
    spec = at(root, "spec")
    assert spec["required"] == ["type"]
    assert {
        "type",
        "input",
        "dataPlaneId",
        "idempotencyKey",
        "requestSource",
        "executorClass",
        "maxAutoReschedules",
    } <= set(spec["properties"])
    assert set(at(spec, "requestSource")["properties"]) == {"type", "companyId", "userId"}
    status = at(root, "status")
    assert {
        "state",
        "executor",
        "attempt",
        "result",
        "startedAt",
        "endedAt",
        "updatedAt",
        "reschedule",
        "autoReschedules",
        "history",
        "conditions",
    } <= set(status["properties"])
    assert {
        "request",
        "outcome",
        "force",
        "handledAt",
        "previousState",
        "previousExecutor",
        "requestedBy",
    } <= set(at(status, "reschedule")["properties"])
    assert {"attempt", "executor", "state", "startedAt", "endedAt", "reason"} <= set(
        at(status, "history", "[]")["properties"]
    )
    for field in ("startedAt", "endedAt", "updatedAt"):
        assert at(status, field) == {"type": "string", "format": "date-time"}


def test_types_of_the_main_fields(job_doc: dict[str, Any], executor_doc: dict[str, Any]) -> None:
    job = root_schema(job_doc)
    assert at(job, "spec", "type")["type"] == "string"
    assert at(job, "spec", "input")["type"] == "object"
    assert at(job, "spec", "input")["x-kubernetes-preserve-unknown-fields"] is True
    assert at(job, "spec", "maxAutoReschedules")["type"] == "integer"
    assert at(job, "spec", "maxAutoReschedules")["minimum"] == 0
    assert at(job, "spec", "requestSource", "companyId") == {"x-kubernetes-int-or-string": True}
    assert at(job, "status", "attempt")["type"] == "integer"
    assert at(job, "status", "result")["x-kubernetes-preserve-unknown-fields"] is True
    assert at(job, "status", "reschedule", "force")["type"] == "boolean"
    assert at(job, "status", "history")["type"] == "array"
    assert at(job, "status", "history")["maxItems"] == HISTORY_LIMIT
    conditions = at(job, "status", "conditions")
    assert conditions["x-kubernetes-list-type"] == "map"
    assert conditions["x-kubernetes-list-map-keys"] == ["type"]
    assert set(conditions["items"]["required"]) == {
        "type",
        "status",
        "reason",
        "lastTransitionTime",
    }
    executor = root_schema(executor_doc)
    assert at(executor, "spec", "attempt") == {"type": "integer", "minimum": 1}
    assert at(executor, "spec")["required"] == ["jobRef", "attempt"]
    assert at(executor, "spec", "jobRef")["required"] == ["name", "uid"]
    assert at(executor, "status", "result")["x-kubernetes-preserve-unknown-fields"] is True


@pytest.mark.parametrize(
    ("path", "literal"),
    [
        ((names.JOB_PLURAL, "status", "state"), JobState),
        ((names.JOB_PLURAL, "status", "history", "[]", "state"), JobState),
        ((names.JOB_PLURAL, "status", "reschedule", "previousState"), JobState),
        ((names.JOB_PLURAL, "status", "cancel", "previousState"), JobState),
        ((names.JOB_PLURAL, "status", "reschedule", "outcome"), RescheduleOutcome),
        ((names.JOB_PLURAL, "status", "cancel", "outcome"), CancelOutcome),
        ((names.JOB_PLURAL, "status", "history", "[]", "reason"), HistoryReason),
        ((names.JOB_PLURAL, "status", "conditions", "[]", "status"), ConditionStatus),
        ((names.EXECUTOR_PLURAL, "status", "phase"), ExecutorPhase),
    ],
    ids=lambda value: ".".join(value) if isinstance(value, tuple) else None,
)
def test_enums_are_the_literal_values(path: tuple[str, ...], literal: Any) -> None:
    document = crd.job_crd() if path[0] == names.JOB_PLURAL else crd.executor_crd()
    schema = at(root_schema(document), *path[1:])
    assert schema["type"] == "string"
    assert schema["enum"] == list(get_args(literal))


def test_contract_enum_values() -> None:
    assert get_args(JobState) == ("pending", "running", "completed", "cancelled", "failed")
    assert get_args(ExecutorPhase) == (
        "Provisioning",
        "Running",
        "Succeeded",
        "Failed",
        "Terminated",
    )
    assert get_args(RescheduleOutcome) == ("rescheduled", "skipped_terminal")


def test_only_type_and_input_are_immutable(job_doc: dict[str, Any]) -> None:
    spec = at(root_schema(job_doc), "spec")
    for name in ("type", "input"):
        [validation] = spec["properties"][name]["x-kubernetes-validations"]
        assert validation["rule"] == IMMUTABLE
        assert validation["message"] == f"spec.{name} is immutable"
    others = set(spec["properties"]) - {"type", "input"}
    assert others
    for name in others:
        assert "x-kubernetes-validations" not in spec["properties"][name], name


@pytest.mark.parametrize(
    ("path", "default"),
    [
        (("spec", "executorClass"), "default"),
        (("spec", "maxAutoReschedules"), 3),
        (("spec", "input"), {}),
        (("status", "state"), "pending"),
        (("status", "attempt"), 0),
        (("status", "autoReschedules"), 0),
    ],
)
def test_defaults(path: tuple[str, ...], default: Any) -> None:
    assert at(root_schema(crd.job_crd()), *path)["default"] == default


def test_optional_fields_have_no_default(job_doc: dict[str, Any]) -> None:
    spec = at(root_schema(job_doc), "spec")
    for name in ("dataPlaneId", "idempotencyKey", "requestSource"):
        assert "default" not in spec["properties"][name], name
    status = at(root_schema(job_doc), "status")
    for name in ("executor", "result", "startedAt", "endedAt", "reschedule", "dispatchAfter"):
        assert "default" not in status["properties"][name], name


def _walk(schema: dict[str, Any], path: str = "") -> list[tuple[str, dict[str, Any]]]:
    nodes = [(path, schema)]
    for name, sub in schema.get("properties", {}).items():
        nodes += _walk(sub, f"{path}.{name}")
    if "items" in schema:
        nodes += _walk(schema["items"], f"{path}[]")
    return nodes


@pytest.mark.parametrize("document", [crd.job_crd, crd.executor_crd], ids=["job", "executor"])
def test_schema_is_structural(document: Any) -> None:
    """Every node has a type (or is int-or-string); free-form objects say so."""
    for path, node in _walk(root_schema(document())):
        assert "type" in node or node.get("x-kubernetes-int-or-string") is True, path
        assert not {"anyOf", "oneOf", "allOf", "$ref", "additionalProperties"} & set(node), path
        if node.get("type") == "object" and path not in ("", ".metadata"):
            assert "properties" in node or node.get("x-kubernetes-preserve-unknown-fields"), path
        if node.get("type") == "array":
            assert "items" in node, path


# --- the CRD envelope -----------------------------------------------------------------------


@pytest.mark.parametrize(
    ("document", "kind", "plural", "singular", "short_names"),
    [
        (crd.job_crd, "Job", "jobs", "job", ["ojob"]),
        (crd.executor_crd, "ExecutorCluster", "executorclusters", "executorcluster", ["ec"]),
    ],
    ids=["job", "executor"],
)
def test_names(
    document: Any, kind: str, plural: str, singular: str, short_names: list[str]
) -> None:
    rendered = document()
    assert rendered["apiVersion"] == "apiextensions.k8s.io/v1"
    assert rendered["kind"] == "CustomResourceDefinition"
    assert rendered["metadata"]["name"] == f"{plural}.job-operator.dev"
    spec = rendered["spec"]
    assert spec["group"] == "job-operator.dev"
    assert spec["scope"] == "Namespaced"
    assert spec["names"]["kind"] == kind
    assert spec["names"]["listKind"] == f"{kind}List"
    assert spec["names"]["plural"] == plural
    assert spec["names"]["singular"] == singular
    assert spec["names"]["shortNames"] == short_names
    served = version(rendered)
    assert (served["name"], served["served"], served["storage"]) == ("v1", True, True)


@pytest.mark.parametrize("document", [crd.job_crd, crd.executor_crd], ids=["job", "executor"])
def test_status_subresource(document: Any) -> None:
    assert version(document())["subresources"] == {"status": {}}


def test_job_printer_columns(job_doc: dict[str, Any]) -> None:
    columns = version(job_doc)["additionalPrinterColumns"]
    assert [(c["name"], c["type"], c["jsonPath"]) for c in columns] == [
        ("State", "string", ".status.state"),
        ("Executor", "string", ".status.executor"),
        ("Attempt", "integer", ".status.attempt"),
        ("Age", "date", ".metadata.creationTimestamp"),
    ]


def test_executor_printer_columns(executor_doc: dict[str, Any]) -> None:
    columns = version(executor_doc)["additionalPrinterColumns"]
    assert [c["name"] for c in columns] == ["Phase", "Job", "Attempt", "Age"]
    assert columns[0]["jsonPath"] == ".status.phase"
    assert columns[-1]["jsonPath"] == ".metadata.creationTimestamp"
