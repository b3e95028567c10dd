"""Renders the CustomResourceDefinitions from the models (the one schema source).

`python -m job_operator.crd` rewrites crds/; a test proves the committed files are
exactly this rendering, so the CRDs and the models cannot drift apart.
"""

from __future__ import annotations

import sys
import types
import typing
from datetime import datetime
from pathlib import Path
from typing import Annotated, Any, Literal, get_args, get_origin

import yaml
from annotated_types import Ge, MaxLen, MinLen
from pydantic import BaseModel
from pydantic.fields import FieldInfo
from pydantic_core import PydanticUndefined

from job_operator import names
from job_operator.models import TIME_SCHEMA, ExecutorSpec, ExecutorStatus, JobSpec, JobStatus

CRD_DIR = Path(__file__).resolve().parents[2] / "crds"


def _type_schema(annotation: Any) -> dict[str, Any]:
    """The OpenAPI v3 schema of one Python type (as the models use them)."""
    origin, args = get_origin(annotation), get_args(annotation)
    if origin is Annotated:  # models.Timestamp inside `| None`
        return _type_schema(args[0])
    if annotation is datetime:  # models.Timestamp: stored as an RFC 3339 string
        return dict(TIME_SCHEMA.json_schema or {})
    if origin in (typing.Union, types.UnionType):
        present = [a for a in args if a is not type(None)]
        if sorted(present, key=str) == sorted([int, str], key=str):
            return {"x-kubernetes-int-or-string": True}
        (only,) = present
        return _type_schema(only)
    if origin is Literal:
        return {"type": "string", "enum": list(args)}
    if origin is list:
        return {"type": "array", "items": _type_schema(args[0])}
    if origin is dict:
        return {"type": "object", "x-kubernetes-preserve-unknown-fields": True}
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return object_schema(annotation)
    simple = {str: "string", int: "integer", bool: "boolean", float: "number"}
    return {"type": simple[annotation]}


def _field_schema(field: FieldInfo) -> dict[str, Any]:
    schema = _type_schema(field.annotation)
    if field.description:
        schema["description"] = field.description
    for meta in field.metadata:
        if isinstance(meta, MinLen):
            schema["minLength"] = meta.min_length
        elif isinstance(meta, MaxLen):
            schema["maxItems" if schema.get("type") == "array" else "maxLength"] = meta.max_length
        elif isinstance(meta, Ge):
            schema["minimum"] = meta.ge
    if field.default not in (PydanticUndefined, None):
        schema["default"] = field.default
    elif field.default_factory is dict:
        schema["default"] = {}
    if isinstance(field.json_schema_extra, dict):
        schema.update(field.json_schema_extra)
    return schema


def object_schema(model: type[BaseModel]) -> dict[str, Any]:
    """The structural schema of a model: its fields by API name, required ones listed."""
    properties: dict[str, Any] = {}
    required: list[str] = []
    for name, field in model.model_fields.items():
        api_name = field.alias or name
        properties[api_name] = _field_schema(field)
        if field.is_required():
            required.append(api_name)
    schema: dict[str, Any] = {"type": "object"}
    if model.__doc__:
        schema["description"] = " ".join(model.__doc__.split())
    schema["properties"] = properties
    if required:
        schema["required"] = required
    return schema


def _crd(
    *,
    kind: str,
    plural: str,
    singular: str,
    short_names: tuple[str, ...],
    spec: type[BaseModel],
    status: type[BaseModel],
    columns: list[dict[str, Any]],
) -> dict[str, Any]:
    return {
        "apiVersion": "apiextensions.k8s.io/v1",
        "kind": "CustomResourceDefinition",
        "metadata": {"name": f"{plural}.{names.GROUP}"},
        "spec": {
            "group": names.GROUP,
            "scope": "Namespaced",
            "names": {
                "kind": kind,
                "listKind": f"{kind}List",
                "plural": plural,
                "singular": singular,
                "shortNames": list(short_names),
                "categories": ["job-operator"],
            },
            "versions": [
                {
                    "name": names.VERSION,
                    "served": True,
                    "storage": True,
                    "subresources": {"status": {}},
                    "additionalPrinterColumns": [
                        *columns,
                        {"name": "Age", "type": "date", "jsonPath": ".metadata.creationTimestamp"},
                    ],
                    "schema": {
                        "openAPIV3Schema": {
                            "type": "object",
                            "required": ["spec"],
                            "properties": {
                                "apiVersion": {"type": "string"},
                                "kind": {"type": "string"},
                                "metadata": {"type": "object"},
                                "spec": object_schema(spec),
                                "status": object_schema(status),
                            },
                        }
                    },
                }
            ],
        },
    }


def job_crd() -> dict[str, Any]:
    return _crd(
        kind=names.JOB_KIND,
        plural=names.JOB_PLURAL,
        singular=names.JOB_SINGULAR,
        short_names=names.JOB_SHORT_NAMES,
        spec=JobSpec,
        status=JobStatus,
        columns=[
            {"name": "State", "type": "string", "jsonPath": ".status.state"},
            {"name": "Executor", "type": "string", "jsonPath": ".status.executor"},
            {"name": "Attempt", "type": "integer", "jsonPath": ".status.attempt"},
        ],
    )


def executor_crd() -> dict[str, Any]:
    return _crd(
        kind=names.EXECUTOR_KIND,
        plural=names.EXECUTOR_PLURAL,
        singular=names.EXECUTOR_SINGULAR,
        short_names=names.EXECUTOR_SHORT_NAMES,
        spec=ExecutorSpec,
        status=ExecutorStatus,
        columns=[
            {"name": "Phase", "type": "string", "jsonPath": ".status.phase"},
            {"name": "Job", "type": "string", "jsonPath": ".spec.jobRef.name"},
            {"name": "Attempt", "type": "integer", "jsonPath": ".spec.attempt"},
        ],
    )


def rendered() -> dict[str, str]:
    """File name -> YAML text of every CRD, as committed under crds/."""
    header = "# Generated from src/job_operator/models.py by `python -m job_operator.crd`.\n"
    return {
        f"{names.JOB_PLURAL}.yaml": header + yaml.safe_dump(job_crd(), sort_keys=False),
        f"{names.EXECUTOR_PLURAL}.yaml": header + yaml.safe_dump(executor_crd(), sort_keys=False),
    }


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else CRD_DIR
    out.mkdir(parents=True, exist_ok=True)
    for name, text in rendered().items():
        (out / name).write_text(text)
        print(out / name)


if __name__ == "__main__":
    main()
