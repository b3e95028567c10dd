"""The HTTP API as the tests run it: the real `job-operator api` program as a process,
and a small HTTP client for it (a caller with a bearer token)."""

from __future__ import annotations

import json
import sys
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from testenv.controlplane import Identity
from tests.deploy_support import INSTALL_NAMESPACE
from tests.helpers import Kube, wait_for
from tests.identities import IdentityMinter
from tests.integration.conftest import Installed, Process, free_port, job_operator_env

API_USER = f"system:serviceaccount:{INSTALL_NAMESPACE}:job-operator-api"


@dataclass(frozen=True)
class Answer:
    status: int
    headers: dict[str, str]  # names in lower case
    body: Any


@dataclass
class Api(Process):
    """A `job-operator api` process on a loopback port."""

    port: int = 0

    def url(self, path: str) -> str:
        return f"http://127.0.0.1:{self.port}{path}"

    def ready(self) -> bool:
        if not self.running():
            raise AssertionError(f"the API exited:\n{self.log()[-3000:]}")
        try:
            return self.call("GET", "/readyz").status == 200
        except OSError:
            return False

    def start_and_wait(self) -> None:
        self.start()
        wait_for(self.ready, timeout=60, description="the API's /readyz")

    def call(
        self,
        method: str,
        path: str,
        token: str | None = None,
        body: Any = None,
        *,
        raw: bytes | None = None,
        headers: dict[str, str] | None = None,
        timeout: float = 90.0,
    ) -> Answer:
        """One request; any status is an answer (only a connection failure raises)."""
        sent = dict(headers or {})
        if token is not None:
            sent["Authorization"] = f"Bearer {token}"
        data = raw if raw is not None else None if body is None else json.dumps(body).encode()
        if data is not None:
            sent.setdefault("Content-Type", "application/json")
        request = urllib.request.Request(self.url(path), data=data, method=method, headers=sent)
        try:
            with urllib.request.urlopen(request, timeout=timeout) as response:
                status, got, content = response.status, response.headers, response.read()
        except urllib.error.HTTPError as error:
            status, got, content = error.code, error.headers, error.read()
        try:
            parsed: Any = json.loads(content)
        except ValueError:
            parsed = content.decode(errors="replace")
        return Answer(status, {k.lower(): v for k, v in got.items()}, parsed)


def api_argv(port: int, *extra: str) -> list[str]:
    return [
        sys.executable, "-m", "job_operator", "api",
        "--address", "127.0.0.1", "--port", str(port), *extra,
    ]  # fmt: skip


def rbac_served(installed: Installed) -> bool:
    """Whether deploy/'s roles could be installed (else every identity is an admin)."""
    return any(o["kind"] == "ClusterRole" for o in installed.objects)


def groups_of(installed: Installed) -> tuple[str, ...]:
    """The groups of a minted identity: none, unless the server serves no RBAC yet (then
    nothing could be granted, and only administrators may act)."""
    return () if rbac_served(installed) else ("system:masters",)


@pytest.fixture
def api_identity(installed: Installed, mint_identity: IdentityMinter) -> Identity:
    """The API's own identity: deploy/'s ServiceAccount job-operator-api (read-only)."""
    return mint_identity(API_USER, groups_of(installed))


@pytest.fixture
def make_api(kube: Kube, api_identity: Identity, tmp_path: Path) -> Iterator[Callable[..., Api]]:
    """Builds API processes (not started), running as `api_identity` unless another
    `kubeconfig` is given."""
    made: list[Api] = []

    def build(*extra: str, kubeconfig: Path | None = None) -> Api:
        port = free_port()
        env = job_operator_env(kubeconfig or api_identity.kubeconfig)
        api = Api(api_argv(port, *extra), env, tmp_path / f"api-{len(made)}.log", port=port)
        made.append(api)
        return api

    yield build
    for api in made:
        api.stop()


def whoami_served(kube: Kube) -> bool:
    """Whether the server answers SelfSubjectReviews (the API learns the caller's name so)."""
    return kube.kubectl_run("auth", "whoami", check=False).returncode == 0


def bind(kube: Kube, namespace: str, role: str, account: str) -> None:
    """A RoleBinding of the ClusterRole `role` to the service account, in `namespace`."""
    kube.kubectl_run(
        "create", "rolebinding", f"{account}-{role}", "-n", namespace,
        f"--clusterrole={role}", f"--serviceaccount={namespace}:{account}",
    )  # fmt: skip


@pytest.fixture
def user(
    kube: Kube, installed: Installed, mint_identity: IdentityMinter, namespace: str
) -> Callable[[str, str], Identity]:
    """A caller: a service account of the test's namespace bound to a user role."""

    def make(account: str, role: str) -> Identity:
        made = mint_identity(f"system:serviceaccount:{namespace}:{account}", groups_of(installed))
        if rbac_served(installed):
            bind(kube, namespace, role, account)
        return made

    return make


@pytest.fixture
def editor(user: Callable[[str, str], Identity]) -> Identity:
    return user("alice", "job-operator-edit")


@pytest.fixture
def api(make_api: Callable[..., Api], namespace: str) -> Api:
    """The API for the test's namespace, under deploy/'s read-only identity."""
    made = make_api("-n", namespace)
    made.start_and_wait()
    return made
