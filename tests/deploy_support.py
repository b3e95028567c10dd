"""The manifests under deploy/, rendered with `kubectl kustomize`, and their RBAC rules
expanded into single grants (for the offline checks: the API server enforces them).

Shared by tests/unit/test_deploy.py (offline checks), tests/integration/test_rbac.py
(the roles enforced by the server) and tests/integration/test_deploy_dry_run.py.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from collections.abc import Iterable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import yaml

REPO = Path(__file__).resolve().parents[1]
DEPLOY = REPO / "deploy"
BASE = DEPLOY / "base"
NAMESPACED = DEPLOY / "overlays" / "namespaced"
PROVISIONER = DEPLOY / "provisioner"
SIMULATOR = DEPLOY / "simulator"
INSTALL_NAMESPACE = "job-operator-system"
SERVICE_ACCOUNT = "job-operator"
SIMULATOR_ACCOUNT = "executor-simulator"
IMAGE = "job-operator:0.1.0"

Obj = dict[str, Any]


def find_kubectl() -> str | None:
    """The kubectl on PATH, else the test control plane's (when it is built or can be)."""
    on_path = shutil.which("kubectl")
    if on_path:
        return on_path
    from testenv.build import ControlPlaneError, ensure_built

    try:
        return str(ensure_built().kubectl)
    except ControlPlaneError:
        return None


def render(kubectl: str, path: Path) -> list[Obj]:
    """`kubectl kustomize PATH`, parsed."""
    proc = subprocess.run(
        [kubectl, "kustomize", str(path)],
        capture_output=True, text=True, timeout=60, check=False, stdin=subprocess.DEVNULL,
    )  # fmt: skip
    if proc.returncode != 0:
        raise AssertionError(f"kubectl kustomize {path} failed:\n{proc.stderr}")
    return [doc for doc in yaml.safe_load_all(proc.stdout) if doc]


def render_in_namespace(kubectl: str, path: Path, namespace: str, scratch: Path) -> list[Obj]:
    """PATH rendered as a user would install it into another namespace: a kustomization
    in `scratch` with `namespace: NAMESPACE` and PATH as its one resource."""
    scratch.mkdir(parents=True, exist_ok=True)
    # kustomize wants a relative path to another kustomization.
    relative = os.path.relpath(path, scratch)
    (scratch / "kustomization.yaml").write_text(
        yaml.safe_dump({"namespace": namespace, "resources": [relative]})
    )
    return render(kubectl, scratch)


def find(objects: Iterable[Obj], kind: str, name: str | None = None) -> list[Obj]:
    return [
        o for o in objects
        if o["kind"] == kind and (name is None or o["metadata"]["name"] == name)
    ]  # fmt: skip


def one(objects: Iterable[Obj], kind: str, name: str | None = None) -> Obj:
    found = find(objects, kind, name)
    assert len(found) == 1, f"expected one {kind} {name or ''}, found {len(found)}"
    return found[0]


# --- RBAC ----------------------------------------------------------------------------


@dataclass(frozen=True)
class Grant:
    """One verb on one resource of one group, as a rule grants it (with its resourceNames)."""

    verb: str
    group: str
    resource: str
    names: frozenset[str]
    namespace: str | None  # None: granted in every namespace and at cluster scope

    def key(self) -> tuple[str, str, str, tuple[str, ...]]:
        """The grant without its scope (to compare a Role with a ClusterRole)."""
        return (self.verb, self.group, self.resource, tuple(sorted(self.names)))

    def __str__(self) -> str:
        named = f" named {sorted(self.names)}" if self.names else ""
        where = f" in {self.namespace}" if self.namespace else " (cluster-wide)"
        return f"{self.verb} {self.group or 'core'}/{self.resource}{named}{where}"


def wildcards(objects: Iterable[Obj]) -> list[str]:
    """Every `*` in the rules of the Roles and ClusterRoles, and every nonResourceURL rule."""
    found = []
    for obj in objects:
        if obj["kind"] not in ("Role", "ClusterRole"):
            continue
        if obj.get("aggregationRule"):
            found.append(f"{obj['kind']}/{obj['metadata']['name']}: aggregationRule")
        for i, rule in enumerate(obj.get("rules") or []):
            for field in ("apiGroups", "resources", "verbs", "resourceNames", "nonResourceURLs"):
                for value in rule.get(field) or []:
                    if "*" in value or field == "nonResourceURLs":
                        found.append(
                            f"{obj['kind']}/{obj['metadata']['name']} rule {i}: {field} {value!r}"
                        )
    return found


def rule_grants(rule: Obj, namespace: str | None) -> Iterator[Grant]:
    names = frozenset(rule.get("resourceNames") or [])
    for group in rule.get("apiGroups") or []:
        for resource in rule.get("resources") or []:
            for verb in rule.get("verbs") or []:
                yield Grant(verb, group, resource, names, namespace)


def role_grants(role: Obj, namespace: str | None = None) -> set[Grant]:
    return {g for rule in role.get("rules") or [] for g in rule_grants(rule, namespace)}


def grants_of(objects: list[Obj], service_account: str, namespace: str) -> set[Grant]:
    """What the bindings in `objects` grant the ServiceAccount NAMESPACE/SERVICE_ACCOUNT."""
    grants: set[Grant] = set()
    for binding in objects:
        if binding["kind"] not in ("RoleBinding", "ClusterRoleBinding"):
            continue
        subjects = binding.get("subjects") or []
        if not any(
            s.get("kind") == "ServiceAccount" and s.get("name") == service_account
            and s.get("namespace") == namespace for s in subjects
        ):  # fmt: skip
            continue
        ref = binding["roleRef"]
        scope = binding["metadata"].get("namespace") if binding["kind"] == "RoleBinding" else None
        roles = [
            o for o in objects
            if o["kind"] == ref["kind"] and o["metadata"]["name"] == ref["name"]
            and (ref["kind"] == "ClusterRole" or o["metadata"].get("namespace") == scope)
        ]  # fmt: skip
        assert len(roles) == 1, f"{binding['kind']}/{binding['metadata']['name']}: no {ref}"
        grants |= role_grants(roles[0], scope)
    return grants
