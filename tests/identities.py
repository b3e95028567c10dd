"""Identities for the tests: users with credentials of their own, on either backend.

On the suite's control plane any user can be minted (a bearer token in the server's token
file: :meth:`testenv.controlplane.ControlPlane.add_user`). On an external cluster
(``JOB_OPERATOR_TEST_KUBECONFIG=1``) only service accounts can: ``system:serviceaccount:NS:NAME``
becomes a ServiceAccount and a token from the TokenRequest API (``kubectl create token``);
other names skip the test. Either way the result is an :class:`Identity` whose kubeconfig
authenticates with the token alone. Tests get a :class:`IdentityMinter` from the
``mint_identity`` fixture (tests/conftest.py).
"""

from __future__ import annotations

import base64
import json
import ssl
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import yaml

from testenv.controlplane import SERVICE_ACCOUNT_PREFIX, Identity, service_account_groups
from tests.helpers import Kube, KubectlError

TOKEN_DURATION = "2h"


@dataclass(frozen=True)
class Endpoint:
    """Where the cluster's API server is and how to trust it (no credentials)."""

    server: str
    ca_file: Path | None
    insecure: bool = False

    def ssl_context(self) -> ssl.SSLContext:
        if self.insecure:
            return ssl._create_unverified_context()
        return ssl.create_default_context(
            cafile=None if self.ca_file is None else str(self.ca_file)
        )


def endpoint(kube: Kube, scratch: Path) -> Endpoint:
    """The current context's server and certificate authority (written to ``scratch``)."""
    view = kube.kubectl_run("config", "view", "--minify", "--raw", "--flatten", "-o", "json")
    cluster: dict[str, Any] = json.loads(view.stdout)["clusters"][0]["cluster"]
    ca_file = None
    if "certificate-authority-data" in cluster:
        scratch.mkdir(parents=True, exist_ok=True)
        ca_file = scratch / "ca.crt"
        ca_file.write_bytes(base64.b64decode(cluster["certificate-authority-data"]))
    elif "certificate-authority" in cluster:
        ca_file = Path(cluster["certificate-authority"])
    return Endpoint(
        server=str(cluster["server"]).rstrip("/"),
        ca_file=ca_file,
        insecure=bool(cluster.get("insecure-skip-tls-verify")),
    )


def token_kubeconfig(path: Path, where: Endpoint, user: str, token: str) -> Path:
    """A kubeconfig for ``where`` that authenticates with ``token`` only."""
    cluster: dict[str, Any] = {"server": where.server}
    if where.insecure:
        cluster["insecure-skip-tls-verify"] = True
    elif where.ca_file is not None:
        cluster["certificate-authority"] = str(where.ca_file)
    config = {
        "apiVersion": "v1",
        "kind": "Config",
        "clusters": [{"name": "cluster", "cluster": cluster}],
        "users": [{"name": user, "user": {"token": token}}],
        "contexts": [{"name": "cluster", "context": {"cluster": "cluster", "user": user}}],
        "current-context": "cluster",
    }
    path.write_text(yaml.safe_dump(config, sort_keys=False))
    path.chmod(0o600)
    return path


def split_service_account(name: str) -> tuple[str, str] | None:
    """``(namespace, name)`` of a ``system:serviceaccount:NS:NAME`` user name, else None."""
    if not service_account_groups(name):
        return None
    namespace, _, account = name.removeprefix(SERVICE_ACCOUNT_PREFIX).partition(":")
    return namespace, account


def kube_as(kube: Kube, identity: Identity) -> Kube:
    """The same cluster and kubectl, as ``identity``."""
    return Kube(
        kubeconfig=identity.kubeconfig,
        kubectl=kube.kubectl,
        control_plane=kube.control_plane,
        kubectl_cache_dir=kube.kubectl_cache_dir,
    )


class IdentityMinter:
    """Mints identities for one test; :meth:`cleanup` deletes what it created in the cluster."""

    def __init__(self, kube: Kube, scratch: Path) -> None:
        self.kube = kube
        self.scratch = scratch
        self._created: list[tuple[str, ...]] = []  # kubectl delete arguments, in order

    def __call__(self, name: str, groups: Sequence[str] = ()) -> Identity:
        """A user ``name`` in ``groups`` (plus what a real cluster adds), with a token."""
        if self.kube.control_plane is not None:
            return self.kube.control_plane.add_user(name, groups)
        return self._service_account(name, groups)

    def _service_account(self, name: str, groups: Sequence[str]) -> Identity:
        parts = split_service_account(name)
        if parts is None:
            pytest.skip(
                f"an external cluster mints tokens only for service accounts, not {name!r} "
                "(the suite's own control plane mints any user)"
            )
        extra = set(groups) - set(service_account_groups(name))
        if extra:
            pytest.skip(
                f"an external cluster cannot put a service account in {sorted(extra)} "
                "(the suite's own control plane can)"
            )
        namespace, account = parts
        if self._create("namespace", namespace):
            self._created.append(("namespace", namespace, "--wait=false"))
        if self._create("serviceaccount", account, "-n", namespace):
            self._created.append(("serviceaccount", account, "-n", namespace))
        token = self.kube.kubectl_run(
            "create", "token", account, "-n", namespace, f"--duration={TOKEN_DURATION}"
        ).stdout.strip()
        where = endpoint(self.kube, self.scratch)
        kubeconfig = token_kubeconfig(
            self.scratch / f"kubeconfig-{namespace}-{account}", where, name, token
        )
        return Identity(name, service_account_groups(name), token, kubeconfig)

    def _create(self, kind: str, *args: str) -> bool:
        """``kubectl create KIND ARGS``: True if it made one, False if it existed."""
        proc = self.kube.kubectl_run("create", kind, *args, check=False)
        if proc.returncode == 0:
            return True
        if "AlreadyExists" in proc.stderr or "already exists" in proc.stderr:
            return False
        raise KubectlError(proc.returncode, proc.args, proc.stdout, proc.stderr)

    def cleanup(self) -> None:
        for args in reversed(self._created):
            self.kube.kubectl_run("delete", *args, "--ignore-not-found", check=False)
        self._created.clear()
