"""Renders docs/reference.md, the user's reference, from the code it describes.

Fields come from the CRDs (`crd.py`, itself rendered from the models), annotations and
labels from `names.py`, metrics from `metrics.py`, events from every `Event(...)` the
package builds, the command line from its argparse parser. What the code cannot say (what
an annotation is for, when an event is posted) is written here, next to the check that it
still matches the code (names.py's Literals of condition types and reasons and of event
reasons): an undocumented name, or prose about a name the code no longer has, is an error.

`python -m job_operator.reference` (`make reference`) rewrites docs/reference.md; a
unit test proves the committed file is exactly this rendering.
"""

from __future__ import annotations

import argparse
import ast
import sys
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Final, get_args

from prometheus_client.metrics import Histogram, MetricWrapperBase

from job_operator import cli, crd, metrics, names, views
from job_operator.api import metrics as api_metrics
from job_operator.models import Job

REFERENCE_PATH = Path(__file__).resolve().parents[2] / "docs" / "reference.md"
SOURCE_DIR = Path(__file__).resolve().parent


class ReferenceError(Exception):
    """The code and the prose here disagree: say what to add or remove, and where."""


# --- prose the code cannot give ----------------------------------------------------------

# Fields whose schema has no description, by path (KIND.spec|status.path, `[]` for list
# items). A field described in its model must not be described here as well.
FIELD_NOTES: Final[Mapping[str, str]] = {
    "Job.spec.dataPlaneId": "Which data plane the job belongs to (the seed API's `data_plane_id`).",
    "Job.spec.idempotencyKey": "The seed API's idempotency key; kept and shown, not interpreted.",
    "Job.spec.requestSource.type": "What kind of caller asked for the job.",
    "Job.spec.requestSource.companyId": "The caller's company.",
    "Job.spec.requestSource.userId": "The caller's user.",
    "Job.status.state": (
        "Where the job is: `pending` until dispatched, then its cluster's phase "
        "(`Running` -> `running`, `Succeeded` -> `completed`, `Failed` -> `failed`); "
        "`completed`, `cancelled` and `failed` are terminal."
    ),
    "Job.status.executor": "The ExecutorCluster that holds the job now; absent when none.",
    "Job.status.attempt": "How many times the job has been dispatched.",
    "Job.status.result": "The cluster's result, set when the job is `completed`.",
    "Job.status.message": "More about `reason`, for people.",
    "Job.status.startedAt": "When the current attempt reached `running`.",
    "Job.status.endedAt": "When the job reached a terminal state.",
    "Job.status.updatedAt": "When the operator last changed the job's state.",
    "Job.status.reschedule.request": "The request's token (the annotation's value).",
    "Job.status.reschedule.outcome": (
        "`rescheduled`, or `skipped_terminal` for a terminal job not forced."
    ),
    "Job.status.reschedule.force": "Whether the request was forced.",
    "Job.status.reschedule.handledAt": "When the operator handled it.",
    "Job.status.reschedule.previousState": "The job's state before the request.",
    "Job.status.reschedule.previousExecutor": "The ExecutorCluster the job left, if any.",
    "Job.status.reschedule.requestedBy": (
        "The field manager that last wrote the annotation, from managedFields: "
        "a hint, not an identity."
    ),
    "Job.status.cancel.request": "The request's token (the annotation's value).",
    "Job.status.cancel.outcome": "`cancelled`, or `skipped_terminal` for a terminal job.",
    "Job.status.cancel.handledAt": "When the operator handled it.",
    "Job.status.cancel.previousState": "The job's state before the request.",
    "Job.status.rejectedRequests[].annotation": "The request annotation refused.",
    "Job.status.rejectedRequests[].reason": "Why, as a word (e.g. `TokenTooLong`).",
    "Job.status.rejectedRequests[].message": "Why, for people.",
    "Job.status.rejectedRequests[].rejectedAt": "When the operator refused it.",
    "Job.status.autoReschedules": (
        "Automatic reschedules (after executor losses) since the last manual one."
    ),
    "Job.status.history[].attempt": "The attempt's number.",
    "Job.status.history[].executor": "The ExecutorCluster it ran on.",
    "Job.status.history[].state": "The job's state when the attempt ended.",
    "Job.status.history[].startedAt": "When the attempt reached `running`.",
    "Job.status.history[].endedAt": "When the attempt ended.",
    "Job.status.history[].reason": "Why it ended.",
    "Job.status.history[].result": "The attempt's result, if it had completed (forced re-run).",
    "Job.status.conditions": (
        "Standard Kubernetes conditions, by `type`: see [Conditions](#conditions)."
    ),
    "Job.status.conditions[].type": "`Dispatched`, `Rescheduled`, `RescheduleRequestValid` "
    "or `CancelRequestValid`.",
    "Job.status.conditions[].status": "`True`, `False` or `Unknown`.",
    "Job.status.conditions[].reason": "Why, as a word: see [Conditions](#conditions).",
    "Job.status.conditions[].message": "Why, for people.",
    "Job.status.conditions[].lastTransitionTime": "When `status` last changed.",
    "Job.status.conditions[].observedGeneration": "The job's generation the condition is about.",
    "Job.status.observedGeneration": "The job's generation the status is about.",
    "ExecutorCluster.spec.jobRef": "The Job this cluster runs an attempt of.",
    "ExecutorCluster.spec.jobRef.name": "The Job's name.",
    "ExecutorCluster.spec.jobRef.uid": "The Job's uid.",
    "ExecutorCluster.spec.attempt": "Which attempt of the job (the job's `status.attempt`).",
    "ExecutorCluster.spec.executorClass": "The job's `spec.executorClass`.",
    "ExecutorCluster.status.phase": (
        "`Provisioning` -> `Running` -> `Succeeded` or `Failed`; `Terminated` when the "
        "cluster died under the job."
    ),
    "ExecutorCluster.status.result": "The job's result, on `Succeeded`.",
    "ExecutorCluster.status.message": "Why, for people (e.g. on `Failed`).",
}

# Annotations and labels, by their constant in names.py.
NAME_NOTES: Final[Mapping[str, tuple[str, str]]] = {
    "RESCHEDULE_ANNOTATION": (
        "Job, written by users",
        "A reschedule request; its value is the request's token (a timestamp, by habit). "
        "Each token is handled once; a new value asks again. At most 256 characters.",
    ),
    "RESCHEDULE_FORCE_ANNOTATION": (
        "Job, written by users",
        "Forces the reschedule request whose token it carries (the same value as "
        "`reschedule`): a completed, cancelled or failed job runs again.",
    ),
    "CANCEL_ANNOTATION": (
        "Job, written by users",
        "A cancel request, by token as `reschedule`: a non-terminal job becomes `cancelled`.",
    ),
    "SIMULATE_OUTCOME_ANNOTATION": (
        "Job, read by the simulator only",
        "How `job-operator simulate` ends this job's attempts: `succeed`, `fail`, "
        "`terminate`, `hang` (stays `Running`) or `stall` (stays `Provisioning`).",
    ),
    "SIMULATE_RUN_SECONDS_ANNOTATION": (
        "Job, read by the simulator only",
        "Seconds from `Running` to the outcome for this job, instead of `--run-seconds`.",
    ),
    "JOB_NAME_LABEL": (
        "ExecutorCluster, set by the operator",
        "The name of the Job it runs (cut to 63 characters).",
    ),
    "JOB_UID_LABEL": (
        "ExecutorCluster, set by the operator",
        "The uid of the Job it runs: `kubectl get ec -l job-operator.dev/job-uid=UID`.",
    ),
}

# Conditions on a Job: type -> [(status, reason, when)].
CONDITIONS: Final[Mapping[str, list[tuple[str, str, str]]]] = {
    "Dispatched": [
        ("True", "ExecutorCreated", "the job was placed on a fresh ExecutorCluster"),
        ("False", "Pending", "the job waits for an ExecutorCluster (new, or rescheduled)"),
        ("False", "Cancelled", "the job was cancelled"),
        ("False", "ExecutorLostTooOften", "the job failed: its clusters were lost too often"),
    ],
    "Rescheduled": [
        ("True", "ManualRequest", "a reschedule request moved the job back to `pending`"),
        ("True", "Forced", "the same, for a forced request"),
        ("True", "ExecutorLost", "the operator rescheduled the job after losing its cluster"),
        ("False", "SkippedTerminal", "a reschedule request found the job terminal, not forced"),
    ],
    "RescheduleRequestValid": [
        ("True", "Accepted", "the last reschedule request was handled"),
        ("False", "TokenTooLong", "the last request's token is over 256 characters"),
    ],
    "CancelRequestValid": [
        ("True", "Accepted", "a cancel request was handled after one was refused"),
        ("False", "TokenTooLong", "the last cancel token is over 256 characters"),
    ],
}

# Events posted on a Job: reason -> (type, when). Each is posted once per request or loss.
EVENTS: Final[Mapping[str, tuple[str, str]]] = {
    "Rescheduled": ("Normal", "a reschedule request was handled: the job is `pending` again"),
    "RescheduleSkipped": ("Normal", "a reschedule request found the job terminal, not forced"),
    "InvalidRescheduleRequest": (
        "Warning",
        "a reschedule token was refused (over 256 characters); nothing changed",
    ),
    "Cancelled": ("Normal", "a cancel request was handled: the job is `cancelled`"),
    "CancelSkipped": ("Normal", "a cancel request found the job already terminal"),
    "InvalidCancelRequest": ("Warning", "a cancel token was refused; nothing changed"),
    "ExecutorLost": (
        "Warning",
        "the job's ExecutorCluster was deleted or `Terminated`: rescheduled automatically",
    ),
    "ExecutorLostTooOften": (
        "Warning",
        "the same past `spec.maxAutoReschedules`: the job is `failed`",
    ),
    "ExecutorFailed": ("Warning", "the job's ExecutorCluster reached `Failed`: so did the job"),
}

# Exit statuses, by their constant in cli.py; then the ones no constant names.
EXIT_NOTES: Final[Mapping[str, str]] = {
    "EXIT_NOT_FOUND": "the job does not exist (or was deleted while waiting); a forced "
    "`reschedule` of a selection not confirmed; `run`: the leader lost its Lease and stopped, "
    "so that only one replica acts",
    "EXIT_REFUSED": "the operator refused the request (e.g. a token over 256 characters); "
    "for a selection, any job's",
    "EXIT_TIMEOUT": "no operator handled the request within `--timeout`; for a selection, "
    "some job's (the summary lists them: the same command with `--token` resumes)",
    "EXIT_DENIED": "the API server refused your credentials (401) or the request (403): "
    "reading a job needs `get` (and `watch`, to wait) on it, a request `patch`; for a "
    "selection, any job's request (each is named)",
    "EXIT_UNREADABLE": "`get`, `reschedule`, `cancel`: the job is stored in a form the "
    "models cannot read (e.g. a status time edited to year 0, which the API server "
    "accepts): the reason names the field",
}
OTHER_EXITS: Final = (
    (
        0,
        "done: for `reschedule` and `cancel`, whatever the outcome; for a selection, every "
        "job handled (or deleted meanwhile)",
    ),
    (
        2,
        "the command line is wrong (argparse's usage error); also a selection that is empty "
        "without `--all`, a NAME with a selection, a forced selection without a terminal to "
        "confirm on or `--yes`",
    ),
    (130, "interrupted (Ctrl-C); a selection's run prints its summary first"),
)

# Label values of the metrics, by metric name and label.
METRIC_LABEL_VALUES: Final[Mapping[tuple[str, str], str]] = {
    ("job_operator_reschedule_requests", "outcome"): "`rescheduled`, `skipped_terminal`, `invalid`",
    ("job_operator_cancel_requests", "outcome"): "`cancelled`, `skipped_terminal`, `invalid`",
    ("job_operator_auto_reschedules", "result"): "`rescheduled`, `failed` (gave up: "
    "`ExecutorLostTooOften`)",
    ("job_operator_api_requests", "route"): "the route's template, e.g. "
    "`/v1/jobs/{job_id}/reschedule`; `unmatched` for paths no route serves",
    ("job_operator_api_requests", "status"): "the HTTP status code",
    ("job_operator_api_requests", "outcome"): "`rescheduled`, `skipped_terminal`, `none`",
    ("job_operator_api_request_duration_seconds", "route"): "as for the requests counter",
    ("job_operator_errors", "stage"): "`reconcile`; `sweep` (a periodic check that failed); "
    "`repair` (the start-up list of jobs, which also posts events a crash kept from being "
    "posted; not retried: the watch brings the jobs all the same); `parse` "
    "(an object the operator cannot read, e.g. a status time edited to year 0: counted each "
    "time it is read, by a watch, a list or a reconcile's read, and left alone, not retried; "
    "a job whose clusters remain is read at each sweep until a fixed version comes); "
    "`event` (an Event not posted, posted again later); "
    "`lease` (a failed leader-election request); `kopf` (what kopf logs as an error: its "
    "watches' and API requests' failures, which it retries, e.g. a `403`)",
}

INTRODUCTION = f"""\
# job-operator reference

Every name users and tools script against: the resources' fields, annotations, labels,
conditions, events, the command line and the metrics. How to use them: [README](../README.md);
deploying and operating: [deploy.md](deploy.md).

This file is generated from the code by `python -m job_operator.reference`
(`make reference`); a test fails when it and the code disagree. The prose the code cannot
give is in `src/job_operator/reference.py`.

All resources are in the API group `{names.GROUP}`, version `{names.VERSION}`.
"""


# --- from the code -------------------------------------------------------------------------


@dataclass(frozen=True)
class FieldRow:
    path: str
    type: str
    default: str
    meaning: str


def cell(text: str) -> str:
    """Text safe inside a Markdown table cell."""
    return " ".join(text.split()).replace("|", "\\|")


def table(header: tuple[str, ...], rows: Sequence[Sequence[str]]) -> str:
    lines = [
        "| " + " | ".join(header) + " |",
        "| " + " | ".join("---" for _ in header) + " |",
        *("| " + " | ".join(cell(c) for c in row) + " |" for row in rows),
    ]
    return "\n".join(lines) + "\n"


def type_text(schema: Mapping[str, Any], required: bool) -> str:
    """A field's OpenAPI schema, as a person would say it."""
    kind = schema.get("type")
    if schema.get("x-kubernetes-int-or-string"):
        text = "integer or string"
    elif "enum" in schema:
        text = "one of " + ", ".join(f"`{v}`" for v in schema["enum"])
    elif schema.get("format") == "date-time":
        text = "time (RFC 3339)"
    elif kind == "array":
        item = schema["items"]
        text = "list of " + ("objects" if item.get("type") == "object" else type_text(item, False))
        if "maxItems" in schema:
            text += f", at most {schema['maxItems']}"
    elif kind == "object":
        text = "object" if "properties" in schema else "object, free-form"
    elif kind in ("string", "integer", "boolean", "number"):
        text = str(kind)
    else:
        raise ReferenceError(f"no words for the schema {dict(schema)}: extend type_text")
    if schema.get("minLength") == 1:
        text = "non-empty " + text
    if "minimum" in schema:
        text += f" >= {schema['minimum']}"
    for rule in schema.get("x-kubernetes-validations", []):
        text += ", immutable" if rule["rule"] == "self == oldSelf" else f", {rule['message']}"
    return text + (", required" if required else "")


def field_rows(
    kind: str, part: str, schema: Mapping[str, Any], notes: dict[str, str]
) -> list[FieldRow]:
    """The rows of one object schema and of every object inside it; `notes` gives (and
    loses) the meaning of each field whose schema has none."""
    rows: list[FieldRow] = []

    def walk(prefix: str, obj: Mapping[str, Any]) -> None:
        required = set(obj.get("required", []))
        for name, prop in obj["properties"].items():
            path = f"{prefix}{name}"
            key = f"{kind}.{part}.{path}"
            item = prop.get("items", {})
            described = prop.get("description")
            note = notes.pop(key, None)
            if described and note:
                raise ReferenceError(f"{key} is described in its model; drop it from FIELD_NOTES")
            meaning = described or note or item.get("description")  # a list: what it holds
            if not meaning:
                raise ReferenceError(
                    f"{key} has no description: add one to its model, or to FIELD_NOTES in "
                    "src/job_operator/reference.py"
                )
            default = prop.get("default")
            rows.append(
                FieldRow(
                    path=path,
                    type=type_text(prop, name in required),
                    default="" if default in (None, "", {}, []) else f"`{default}`",
                    meaning=str(meaning),
                )
            )
            if "properties" in prop:
                walk(f"{path}.", prop)
            elif item.get("type") == "object" and "properties" in item:
                walk(f"{path}[].", item)

    walk("", schema)
    return rows


def resource_section(resource: Mapping[str, Any], notes: dict[str, str], extra: str) -> str:
    spec = resource["spec"]
    kind, version = spec["names"]["kind"], spec["versions"][0]
    root = version["schema"]["openAPIV3Schema"]["properties"]
    columns = ", ".join(
        f"{c['name'].upper()} (`{c['jsonPath']}`)" for c in version["additionalPrinterColumns"]
    )
    short = ", ".join(f"`{s}`" for s in spec["names"]["shortNames"])
    out = [
        f"## {kind}\n",
        f"`{resource['metadata']['name']}`, {spec['scope'].lower()}, short name {short}. "
        f"`kubectl get {spec['names']['shortNames'][0]}` shows NAME, {columns}.\n",
        extra,
    ]
    for part in ("spec", "status"):
        rows = field_rows(kind, part, root[part], notes)
        out.append(f"### {part}\n\n{root[part]['description']}\n")
        out.append(
            table(
                ("field", "type", "default", "meaning"),
                [(f"`{r.path}`", r.type, r.default, r.meaning) for r in rows],
            )
        )
    return "\n".join(out)


def constants(suffix: str) -> list[tuple[str, str]]:
    """(constant, value) of every names.py constant whose name ends with `suffix`."""
    return [(k, v) for k, v in vars(names).items() if k.endswith(suffix) and isinstance(v, str)]


def names_section() -> str:
    unused = set(NAME_NOTES)
    parts = []
    for title, suffix in (("Annotations", "_ANNOTATION"), ("Labels", "_LABEL")):
        rows = []
        for constant, value in constants(suffix):
            if constant not in NAME_NOTES:
                raise ReferenceError(
                    f"names.{constant} is not documented: add it to NAME_NOTES in "
                    "src/job_operator/reference.py"
                )
            unused.discard(constant)
            on, meaning = NAME_NOTES[constant]
            rows.append((f"`{value}`", on, meaning))
        parts.append(f"## {title}\n\n" + table((title[:-1].lower(), "on", "meaning"), rows))
    if unused:
        raise ReferenceError(f"NAME_NOTES names what names.py no longer has: {sorted(unused)}")
    parts[0] = parts[0].replace(
        "## Annotations\n\n",
        "## Annotations\n\nThe operator reads the request annotations and never removes or "
        "rewrites them, so GitOps tools see no drift. Force counts only when "
        "`reschedule-force` carries the same token as `reschedule`.\n\n",
    )
    return "\n".join(parts)


def require_declared(kind: str, literal: Any, documented: set[str]) -> None:
    """The words a `Literal` of names.py declares are exactly the documented ones."""
    declared = set(get_args(literal))
    if declared != documented:
        raise ReferenceError(
            f"{kind}: names.py declares {sorted(declared - documented)} undocumented, and "
            f"src/job_operator/reference.py documents {sorted(documented - declared)} "
            "undeclared: document each, and only those"
        )


def conditions_section() -> str:
    rows = [
        (f"`{type_}`", status, f"`{reason}`", when)
        for type_, reasons in CONDITIONS.items()
        for status, reason, when in reasons
    ]
    require_declared("condition types", names.ConditionType, set(CONDITIONS))
    reasons = {reason for listed in CONDITIONS.values() for _, reason, _ in listed}
    require_declared("condition reasons", names.ConditionReason, reasons)
    return (
        "## Conditions\n\nOn a Job's `status.conditions`; `lastTransitionTime` moves only when "
        "`status` changes.\n\n" + table(("type", "status", "reason", "when"), rows)
    )


def strings_of(node: ast.expr, function: ast.AST, where: str) -> set[str]:
    """The strings an expression can be: a literal, either branch of `a if c else b`, or a
    local variable's (every string assigned to it in `function`)."""
    if isinstance(node, ast.Constant) and isinstance(node.value, str):
        return {node.value}
    if isinstance(node, ast.IfExp):
        return strings_of(node.body, function, where) | strings_of(node.orelse, function, where)
    if isinstance(node, ast.Name):
        values = [
            assign.value
            for assign in ast.walk(function)
            if isinstance(assign, ast.Assign)
            and any(isinstance(t, ast.Name) and t.id == node.id for t in assign.targets)
        ]
        if values:
            return set().union(*(strings_of(v, function, where) for v in values))
    raise ReferenceError(
        f"{where}: cannot tell which strings {ast.unparse(node)} can be; build the Event with "
        "literal strings, or a local variable assigned them"
    )


def events_in_code() -> dict[str, set[str]]:
    """Each event reason the package posts, with its types: read from every
    `Event(type, reason, ...)` it builds."""
    found: dict[str, set[str]] = {}
    for path in sorted(SOURCE_DIR.rglob("*.py")):
        if path.name == "reference.py":
            continue
        tree = ast.parse(path.read_text())
        for function in ast.walk(tree):
            if not isinstance(function, ast.FunctionDef | ast.AsyncFunctionDef):
                continue
            for call in ast.walk(function):
                if not (isinstance(call, ast.Call) and len(call.args) >= 2):
                    continue
                called = call.func
                name = called.id if isinstance(called, ast.Name) else getattr(called, "attr", "")
                if name != "Event":
                    continue
                where = f"{path.relative_to(SOURCE_DIR.parent)}:{call.lineno}"
                types = strings_of(call.args[0], function, where)
                for reason in strings_of(call.args[1], function, where):
                    found.setdefault(reason, set()).update(types)
    return found


def events_section() -> str:
    require_declared("event reasons", names.EventReason, set(EVENTS))
    posted = events_in_code()
    documented = {reason: {type_} for reason, (type_, _) in EVENTS.items()}
    differ = {
        reason: (sorted(posted.get(reason, ())), sorted(documented.get(reason, ())))
        for reason in posted.keys() | documented.keys()
        if posted.get(reason) != documented.get(reason)
    }
    if differ:
        raise ReferenceError(
            "events (reason: types posted, types documented) that the code and EVENTS in "
            f"src/job_operator/reference.py disagree on: {differ}"
        )
    rows = [(f"`{reason}`", type_, when) for reason, (type_, when) in EVENTS.items()]
    return (
        "## Events\n\nPosted on the Job (`kubectl describe ojob NAME`) by `job-operator`. "
        "Each is named after what it is about (the request's token, the lost cluster), so "
        "it is posted once, even across operator crashes.\n\n"
        + table(("reason", "type", "when"), rows)
    )


def subcommands(
    parser: argparse.ArgumentParser,
) -> Iterator[tuple[str, str, argparse.ArgumentParser]]:
    """(name, help, parser) of each subcommand, in the order they were added."""
    for action in parser._actions:
        if isinstance(action, argparse._SubParsersAction):
            helps = {a.dest: a.help or "" for a in action._choices_actions}
            for name, sub in action.choices.items():
                yield name, helps.get(name, ""), sub


def option_rows(parser: argparse.ArgumentParser) -> list[tuple[str, str, str]]:
    """(flags, default, meaning) of each argument a user can give `parser`."""
    rows = []
    for action in parser._actions:
        if action.help == argparse.SUPPRESS or isinstance(
            action, argparse._HelpAction | argparse._SubParsersAction
        ):
            continue
        if not action.help:
            raise ReferenceError(
                f"{parser.prog}: {'/'.join(action.option_strings) or action.dest} has no help"
            )
        if action.option_strings:
            metavar = "" if action.nargs == 0 else " " + str(action.metavar or action.dest.upper())
            flags = ", ".join(f"`{o}{metavar}`" for o in action.option_strings)
        else:
            flags = f"`{action.metavar or action.dest}`"
        default = action.default
        quiet = default is None or default is False or default == argparse.SUPPRESS
        meaning = action.help % {"default": default}
        if action.choices and not isinstance(action.choices, Mapping):
            meaning += "; one of " + ", ".join(f"`{c}`" for c in action.choices)
        rows.append((flags, "" if quiet else f"`{default}`", meaning))
    return rows


def cli_section() -> str:
    top = cli.parser()
    out = [
        "## Command line\n",
        f"`{top.prog}`: {top.description} `pip install .` also installs `kubectl-reschedule`, "
        f"the `reschedule` command as a kubectl plugin (`kubectl reschedule NAME --force`).\n",
        table(("option", "default", "meaning"), option_rows(top)),
    ]
    for name, help_, sub in subcommands(top):
        usage = " ".join(sub.format_usage().split()).removeprefix("usage: ")
        out.append(
            f"### {top.prog} {name}\n\n{help_[:1].upper() + help_[1:]}.\n\n```\n{usage}\n```\n"
        )
        out.append(table(("option", "default", "meaning"), option_rows(sub)))
    sample = Job.model_validate({"metadata": {"name": "sample"}, "spec": {"type": "sample"}})
    keys = ", ".join(f"`{k}`" for k in views.seed_result("rescheduled", sample))
    out.append(
        "### Output\n\n`reschedule` and `cancel` print the outcome (`rescheduled`, "
        "`cancelled` or `skipped_terminal`) with the job afterwards, in the seed API's "
        f"shape: {keys} (`job_id` is the Job's uid); `get` the same without `outcome`; "
        "`--no-wait` only the request written.\n"
    )
    codes = [(k, v) for k, v in vars(cli).items() if k.startswith("EXIT_") and isinstance(v, int)]
    differ = {k for k, _ in codes} ^ set(EXIT_NOTES)
    if differ:
        raise ReferenceError(
            f"cli.py's EXIT_ constants and EXIT_NOTES in src/job_operator/reference.py differ "
            f"in {sorted(differ)}: document each exit status there, and only those"
        )
    exits = sorted([*OTHER_EXITS, *((v, EXIT_NOTES[k]) for k, v in codes)])
    out.append(
        "### Exit status\n\nEvery failure prints a one-line reason on stderr.\n\n"
        + table(("status", "meaning"), [(str(code), text) for code, text in exits])
    )
    return "\n".join(out)


def collectors(module: Any = metrics) -> list[MetricWrapperBase]:
    """The Prometheus collectors a metrics module defines (the operator's by default)."""
    found = [v for v in vars(module).values() if isinstance(v, MetricWrapperBase)]
    return sorted(found, key=lambda m: str(m._name))


def metric_kinds() -> dict[str, str]:
    """Each of the operator's metrics' family name (as a scrape's parser names it) and type."""
    return {m._name: str(m._type) for m in collectors()}


def metric_rows(
    found: list[MetricWrapperBase], unused: set[tuple[str, str]]
) -> list[tuple[str, str, str, str]]:
    """Rows of the metrics table; the label entries used are taken out of `unused`."""
    rows = []
    for metric in found:
        name, kind = metric._name, str(metric._type)
        labels = []
        for label in metric._labelnames:
            key = (name, label)
            if key not in METRIC_LABEL_VALUES:
                raise ReferenceError(
                    f"{name}'s label {label} has no values listed: add it to "
                    "METRIC_LABEL_VALUES in src/job_operator/reference.py"
                )
            unused.discard(key)
            labels.append(f"`{label}`: {METRIC_LABEL_VALUES[key]}")
        exposed = f"{name}_total" if kind == "counter" else name
        meaning = str(metric._documentation)
        if isinstance(metric, Histogram):
            bounds = [f"{b:g}" for b in metric._upper_bounds if b != float("inf")]
            meaning += f" Buckets (s): {', '.join(bounds)}."
        rows.append((f"`{exposed}`", kind, "; ".join(labels) or "-", meaning))
    return rows


def metrics_section() -> str:
    unused = set(METRIC_LABEL_VALUES)
    operator_rows = metric_rows(collectors(), unused)
    api_rows = metric_rows(collectors(api_metrics), unused)
    if unused:
        raise ReferenceError(f"METRIC_LABEL_VALUES names unknown labels: {sorted(unused)}")
    header = ("metric", "type", "labels", "meaning")
    return (
        "## Metrics\n\n`job-operator run` serves them on `--metrics-port` (`/metrics`), with "
        "`/healthz` and `/readyz`. Only the leader's counters move; they restart at zero "
        "with the process. Queries and alerts: [deploy.md](deploy.md#metrics).\n\n"
        + table(header, operator_rows)
        + "\n### Of the HTTP API (`job-operator api`)\n\n"
        "`job-operator api` serves these on its own port "
        "(`/metrics`), each replica its own ([api.md](api.md)).\n\n" + table(header, api_rows)
    )


def executor_extra() -> str:
    return (
        "The cluster a job attempt runs on. The operator creates a fresh one for every "
        f"dispatch, named `{names.EXECUTOR_NAME_PREFIX}<uuid4>`, in the job's namespace, "
        "owned by the Job (controller ownerReference) and labelled with the job's name and "
        "uid ([Labels](#labels)); it deletes it when the job leaves it. Its `status` is "
        "written by whatever provisions clusters (`job-operator simulate`, or a real "
        "provisioner).\n"
    )


def job_extra() -> str:
    return (
        "A unit of data-plane work, kept running by the operator: each attempt runs on an "
        "[ExecutorCluster](#executorcluster) made for it. Requests are made with "
        "[annotations](#annotations).\n"
    )


def rendered() -> str:
    """docs/reference.md's text."""
    notes = dict(FIELD_NOTES)
    sections = [
        INTRODUCTION,
        resource_section(crd.job_crd(), notes, job_extra()),
        resource_section(crd.executor_crd(), notes, executor_extra()),
        names_section(),
        conditions_section(),
        events_section(),
        cli_section(),
        metrics_section(),
    ]
    if notes:
        raise ReferenceError(f"FIELD_NOTES names fields the CRDs no longer have: {sorted(notes)}")
    return "\n".join(sections)


def main() -> None:
    out = Path(sys.argv[1]) if len(sys.argv) > 1 else REFERENCE_PATH
    out.write_text(rendered())
    print(out)


if __name__ == "__main__":
    main()
