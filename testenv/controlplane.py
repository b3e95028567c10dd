"""Run the test API server: etcd and the built server on free loopback ports.

:class:`ControlPlane` starts both with fresh certificates and writes an admin kubeconfig
(a client certificate in ``system:masters``); :meth:`ControlPlane.add_user` mints other
users, each with a bearer token and a kubeconfig that uses it.
``python -m testenv.controlplane up|down|add-user|build|kubectl-path`` is the small CLI
behind ``make cluster-up``. Fetching and building is :mod:`testenv.build`'s part.
"""

from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import fcntl
import hashlib
import io
import json
import os
import re
import secrets
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable, Iterator, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, Self

import yaml

from testenv.build import (
    ControlPlaneError,
    Log,
    Toolchain,
    ensure_built,
    file_tail,
    mkdir_p,
    run_command,
    stderr_log,
    wrapper_dir,
    write_json_atomic,
)

DEFAULT_AUDIT_POLICY: Final = """\
apiVersion: audit.k8s.io/v1
kind: Policy
rules:
- level: Metadata
"""
DISABLED_ADMISSION_PLUGINS: Final = (
    "NamespaceLifecycle",
    "MutatingAdmissionWebhook",
    "ValidatingAdmissionWebhook",
    "ValidatingAdmissionPolicy",
    "MutatingAdmissionPolicy",
)
# Our own openssl config: X.509's 64-character limits on CN and O are lifted, since user
# names such as system:serviceaccount:NAMESPACE:NAME are often longer (Kubernetes and Go
# do not mind).
OPENSSL_CONF: Final = """\
openssl_conf = openssl_init

[openssl_init]
stbl_section = string_limits

[string_limits]
commonName = min:1,max:1024
organizationName = min:1,max:1024

[req]
distinguished_name = req_dn
prompt = no

[req_dn]
"""
DIR_MARKER: Final = ".job-operator-controlplane"
STATE_FILE: Final = "state.json"
TOKEN_FILE: Final = "tokens.csv"
# hack/controlplane/: the stand-in CRDs and the default RBAC policy (the server creates it).
LEASES_CRD: Final = "leases-crd.yaml"
RBAC_CRDS: Final = "rbac-crds.yaml"
BOOTSTRAP_POLICY: Final = "bootstrap-policy.yaml"
STAND_IN_CRDS: Final = (
    "leases.coordination.k8s.io",
    "roles.rbac.authorization.k8s.io",
    "clusterroles.rbac.authorization.k8s.io",
    "rolebindings.rbac.authorization.k8s.io",
    "clusterrolebindings.rbac.authorization.k8s.io",
)
# The server's readyz check that passes once it has loaded the RBAC objects.
POLICY_READY_CHECK: Final = "rbac-policy"
SERVICE_ACCOUNT_PREFIX: Final = "system:serviceaccount:"


@dataclasses.dataclass(frozen=True)
class Identity:
    """A user the API server knows: its name, groups, bearer token and a kubeconfig using it.

    ``groups`` are the groups the server reports for it, besides ``system:authenticated``
    (which every authenticated user has).
    """

    name: str
    groups: tuple[str, ...]
    token: str
    kubeconfig: Path


def service_account_groups(name: str) -> tuple[str, ...]:
    """The groups a real cluster gives a service account's token: none for other users.

    ``system:serviceaccount:NS:NAME`` is in ``system:serviceaccounts`` and
    ``system:serviceaccounts:NS``.
    """
    if not name.startswith(SERVICE_ACCOUNT_PREFIX):
        return ()
    namespace, sep, account = name.removeprefix(SERVICE_ACCOUNT_PREFIX).partition(":")
    if not sep or not namespace or not account:
        return ()
    return ("system:serviceaccounts", f"system:serviceaccounts:{namespace}")


def token_file_line(token: str, name: str, uid: str, groups: Sequence[str]) -> str:
    """One line of the server's token file (kube-apiserver's ``--token-auth-file`` CSV)."""
    out = io.StringIO()
    row = [token, name, uid] + ([",".join(groups)] if groups else [])
    csv.writer(out, lineterminator="\n").writerow(row)
    return out.getvalue()


# --------------------------------------------------------------------------------------
# Processes: own process groups, stopped by group, zombie-aware.


def _proc_stat(pid: int) -> list[str] | None:
    """Fields of /proc/PID/stat from field 3 (state) on, or None if there is no such process."""
    try:
        raw = Path(f"/proc/{pid}/stat").read_text()
    except OSError:
        return None
    return raw[raw.rfind(")") + 2 :].split()


def _start_ticks(pid: int) -> str:
    fields = _proc_stat(pid)
    return fields[19] if fields and len(fields) > 19 else ""


def _group_members(pgid: int) -> list[int]:
    """Live (not zombie) processes of a process group."""
    proc = Path("/proc")
    if not proc.is_dir():  # pragma: no cover - not Linux
        try:
            os.killpg(pgid, 0)
        except ProcessLookupError:
            return []
        except PermissionError:
            pass
        return [pgid]
    members = []
    for entry in proc.iterdir():
        if not entry.name.isdigit():
            continue
        fields = _proc_stat(int(entry.name))
        if fields and len(fields) > 2 and fields[2] == str(pgid) and fields[0] != "Z":
            members.append(int(entry.name))
    return members


def _terminate_group(
    pgid: int, popen: subprocess.Popen[bytes] | None, timeout: float, name: str, kill: bool
) -> None:
    def reap() -> None:
        if popen is not None:
            popen.poll()

    def wait_gone(seconds: float) -> bool:
        deadline = time.monotonic() + seconds
        while True:
            reap()
            if not _group_members(pgid):
                return True
            if time.monotonic() >= deadline:
                return False
            time.sleep(0.05)

    reap()
    if not _group_members(pgid):
        return
    steps = [(signal.SIGTERM, timeout)] if not kill else []
    for sig, seconds in [*steps, (signal.SIGKILL, 5.0)]:
        try:
            os.killpg(pgid, sig)
        except ProcessLookupError:
            reap()
            return
        if wait_gone(seconds):
            if popen is not None:
                with contextlib.suppress(subprocess.TimeoutExpired):
                    popen.wait(timeout=1)
            return
    raise ControlPlaneError(f"{name} (process group {pgid}) survived SIGKILL")


@dataclasses.dataclass
class _Process:
    name: str
    argv: list[str]
    log_path: Path
    popen: subprocess.Popen[bytes] | None = None
    pid: int = 0
    start_ticks: str = ""

    def start(self) -> None:
        with self.log_path.open("ab") as out:
            out.write(f"\n--- {time.strftime('%H:%M:%S')} $ {' '.join(self.argv)}\n".encode())
            out.flush()
            try:
                self.popen = subprocess.Popen(
                    self.argv,
                    stdin=subprocess.DEVNULL,
                    stdout=out,
                    stderr=subprocess.STDOUT,
                    start_new_session=True,
                    close_fds=True,
                )
            except OSError as e:
                raise ControlPlaneError(f"cannot start {self.name}: {e}") from e
        self.pid = self.popen.pid
        self.start_ticks = _start_ticks(self.pid)

    def exit_code(self) -> int | None:
        """The exit code if it ended (only known for processes we started), else None."""
        return None if self.popen is None else self.popen.poll()

    def alive(self) -> bool:
        if not self.pid:
            return False
        if self.popen is not None:
            return self.popen.poll() is None
        fields = _proc_stat(self.pid)
        if fields is None or fields[0] == "Z":
            return False
        return not self.start_ticks or fields[19] == self.start_ticks

    def stop(self, timeout: float, kill: bool = False) -> None:
        if not self.pid:
            return
        if self.popen is None and not self.alive() and not _group_members(self.pid):
            self.pid = 0
            return
        _terminate_group(self.pid, self.popen, timeout, self.name, kill)
        self.popen = None
        self.pid = 0
        self.start_ticks = ""

    def detach(self) -> None:
        """Forget the Popen handle (the process lives on; it is still known by pid)."""
        if self.popen is not None:
            # Keep Popen.__del__ from warning about a child that still runs.
            self.popen.returncode = 0
            self.popen = None

    def to_json(self) -> dict[str, Any]:
        return {"pid": self.pid, "start_ticks": self.start_ticks, "argv": self.argv}


# --------------------------------------------------------------------------------------
# The control plane.


def _free_ports(count: int) -> list[int]:
    socks = []
    try:
        for _ in range(count):
            s = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
            s.bind(("127.0.0.1", 0))
            socks.append(s)
        return [s.getsockname()[1] for s in socks]
    finally:
        for s in socks:
            s.close()


def _file_safe(name: str) -> str:
    return re.sub(r"[^A-Za-z0-9_.-]", "_", name)


@contextlib.contextmanager
def _file_lock(path: Path) -> Iterator[None]:
    """An exclusive lock on ``path`` (made if missing), for read-modify-write of a file."""
    with path.open("a") as f:
        fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _subject(user: str, groups: Sequence[str]) -> str:
    def esc(value: str) -> str:
        return re.sub(r"([/\\+=,])", r"\\\1", value)

    return "".join(f"/O={esc(g)}" for g in groups) + f"/CN={esc(user)}"


class ControlPlane:
    """etcd plus the CRD API server on loopback ports, with a kubeconfig for an admin.

    ``with ControlPlane(audit=True) as cp: ...`` or ``start()``/``stop()``. With no
    ``data_dir`` a temporary folder is used and removed by ``stop()`` (unless ``keep_data`` or
    ``$JOB_OPERATOR_KEEP_CONTROLPLANE=1``); a given ``data_dir`` is never removed.
    """

    def __init__(
        self,
        toolchain: Toolchain | None = None,
        *,
        data_dir: Path | None = None,
        audit: bool = False,
        audit_policy: str = DEFAULT_AUDIT_POLICY,
        keep_data: bool | None = None,
        ready_timeout: float = 90.0,
        stop_timeout: float = 15.0,
        extra_apiserver_args: Sequence[str] = (),
        extra_etcd_args: Sequence[str] = (),
        log: Log | None = None,
    ) -> None:
        self._toolchain = toolchain
        self._given_dir = data_dir is not None
        self.data_dir = Path(data_dir).resolve() if data_dir is not None else None
        self.audit = audit
        self.audit_policy = audit_policy
        self.keep_data = (
            keep_data
            if keep_data is not None
            else os.environ.get("JOB_OPERATOR_KEEP_CONTROLPLANE") == "1"
        )
        self.ready_timeout = ready_timeout
        self.stop_timeout = stop_timeout
        self.extra_apiserver_args = list(extra_apiserver_args)
        self.extra_etcd_args = list(extra_etcd_args)
        self._log = log or stderr_log
        self.etcd_port = 0
        self.etcd_peer_port = 0
        self.apiserver_port = 0
        self._etcd: _Process | None = None
        self._apiserver: _Process | None = None
        self._ssl: ssl.SSLContext | None = None
        # Once the RBAC stand-ins exist, the server is ready only with its policy loaded.
        self._policy_installed = False

    # -- paths --------------------------------------------------------------------------

    def _dir(self) -> Path:
        if self.data_dir is None:
            raise ControlPlaneError("the control plane has not been started")
        return self.data_dir

    @property
    def toolchain(self) -> Toolchain:
        if self._toolchain is None:
            self._toolchain = ensure_built(log=self._log)
        return self._toolchain

    @property
    def pki(self) -> Path:
        return self._dir() / "pki"

    @property
    def kubeconfig(self) -> Path:
        """The admin's kubeconfig (group system:masters)."""
        return self._dir() / "kubeconfig"

    @property
    def token_file(self) -> Path:
        """The server's bearer tokens (``--token-auth-file``), which :meth:`add_user` extends."""
        return self._dir() / TOKEN_FILE

    @property
    def audit_log(self) -> Path | None:
        """The audit log (JSON lines), when started with ``audit=True``."""
        return self._dir() / "audit.log" if self.audit else None

    @property
    def server_url(self) -> str:
        return f"https://127.0.0.1:{self.apiserver_port}"

    @property
    def etcd_url(self) -> str:
        return f"http://127.0.0.1:{self.etcd_port}"

    @property
    def kubectl(self) -> Path:
        return self.toolchain.kubectl

    @property
    def apiserver_log(self) -> Path:
        return self._dir() / "apiserver.log"

    @property
    def etcd_log(self) -> Path:
        return self._dir() / "etcd.log"

    # -- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> Self:
        self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def start(self) -> None:
        """Fresh data folder, certificates, kubeconfig; start etcd, then the server; wait."""
        if self._etcd is not None or self._apiserver is not None:
            raise ControlPlaneError("the control plane is already started")
        toolchain = self.toolchain
        self._prepare_dir()
        try:
            self.etcd_port, self.etcd_peer_port, self.apiserver_port = _free_ports(3)
            self._make_pki()
            self._write_kubeconfig(self.kubeconfig, "admin", self._cert_credentials("admin"))
            self.token_file.write_text("")
            if self.audit:
                (self._dir() / "audit-policy.yaml").write_text(self.audit_policy)
            self._etcd = _Process("etcd", self._etcd_argv(toolchain), self.etcd_log)
            self._apiserver = _Process(
                "apiserver", self._apiserver_argv(toolchain), self.apiserver_log
            )
            self.start_etcd()
            self.start_apiserver()
            self._install_stand_ins()
            self._write_state()
        except BaseException:
            with contextlib.suppress(ControlPlaneError):
                self._stop_processes()
            raise

    def _install_stand_ins(self) -> None:
        """Serve the built-in APIs the operator and the tests need beyond CRDs, by CRDs with
        the same group, version and fields: coordination.k8s.io Leases (leader election)
        and rbac.authorization.k8s.io (Roles, ClusterRoles, their bindings); then wait
        until the server has loaded them and its default policy, and authorises by them."""
        hack = wrapper_dir().parent
        base: list[str | Path] = [
            self.kubectl,
            f"--kubeconfig={self.kubeconfig}",
            f"--cache-dir={self._dir() / 'kubectl-cache'}",
        ]
        run_command(
            [*base, "apply", "-f", hack / LEASES_CRD, "-f", hack / RBAC_CRDS],
            what="installing the stand-in CRDs",
        )
        run_command(
            [*base, "wait", "--for=condition=Established", "--timeout=60s"]
            + [f"crd/{name}" for name in STAND_IN_CRDS],
            what="waiting for the stand-in CRDs",
        )
        self._policy_installed = True
        self._wait_until(self._policy_ready, "the RBAC policy to be in force", self.apiserver_log)

    def stop(self) -> None:
        """Stop the server and etcd (SIGTERM, then SIGKILL), leaving no process; idempotent."""
        self._stop_processes()
        if self.data_dir is None:
            return
        state = self.data_dir / STATE_FILE
        state.unlink(missing_ok=True)
        if not self._given_dir and not self.keep_data:
            shutil.rmtree(self.data_dir, ignore_errors=True)
            self.data_dir = None

    def _stop_processes(self) -> None:
        errors = []
        for proc in (self._apiserver, self._etcd):
            if proc is None:
                continue
            try:
                proc.stop(self.stop_timeout)
            except ControlPlaneError as e:
                errors.append(e)
        self._apiserver = None
        self._etcd = None
        if errors:
            raise errors[0]

    def running(self) -> bool:
        return all(p is not None and p.alive() for p in (self._etcd, self._apiserver))

    def detach(self) -> None:
        """Let the processes outlive this object (the CLI's ``up``); ``attach`` finds them."""
        self._write_state()
        for proc in (self._etcd, self._apiserver):
            if proc is not None:
                proc.detach()

    @classmethod
    def attach(cls, data_dir: Path, *, log: Log | None = None) -> ControlPlane:
        """The control plane that ``up`` left running in ``data_dir`` (from its state file)."""
        path = Path(data_dir).resolve() / STATE_FILE
        try:
            state = json.loads(path.read_text())
        except FileNotFoundError as e:
            raise ControlPlaneError(f"no control plane state in {path.parent}") from e
        except (OSError, ValueError) as e:
            raise ControlPlaneError(f"unreadable control plane state {path}: {e}") from e
        cp = cls(
            Toolchain.from_json(state["toolchain"]),
            data_dir=path.parent,
            audit=bool(state.get("audit")),
            log=log,
        )
        cp.etcd_port = int(state["ports"]["etcd"])
        cp.etcd_peer_port = int(state["ports"]["etcd_peer"])
        cp.apiserver_port = int(state["ports"]["apiserver"])
        cp._policy_installed = True  # up installs it before writing the state
        for name, log_path in (("etcd", cp.etcd_log), ("apiserver", cp.apiserver_log)):
            info = state["processes"][name]
            proc = _Process(
                name,
                [str(a) for a in info["argv"]],
                log_path,
                pid=int(info["pid"]),
                start_ticks=str(info["start_ticks"]),
            )
            if name == "etcd":
                cp._etcd = proc
            else:
                cp._apiserver = proc
        return cp

    def start_etcd(self) -> None:
        proc = self._require(self._etcd, "etcd")
        if proc.alive():
            return
        proc.start()
        self._wait("etcd", proc, self.etcd_log, self._etcd_healthy)

    def stop_etcd(self, *, kill: bool = False) -> None:
        """SIGTERM etcd, or SIGKILL it (``kill``).

        Gracefully, etcd waits up to its request timeout (7 s) for open watch streams, so with
        the server running this takes about 7 s.
        """
        self._require(self._etcd, "etcd").stop(self.stop_timeout, kill)

    def restart_etcd(self, *, kill: bool = False) -> None:
        """Stop etcd (``kill``: SIGKILL, a crash) and start it again on the same port and data;
        wait until etcd and the server are ready again."""
        self.stop_etcd(kill=kill)
        self.start_etcd()
        apiserver = self._require(self._apiserver, "apiserver")
        self._wait("apiserver", apiserver, self.apiserver_log, self._apiserver_ready)
        self._write_state()

    def start_apiserver(self) -> None:
        proc = self._require(self._apiserver, "apiserver")
        if proc.alive():
            return
        proc.start()
        self._wait("apiserver", proc, self.apiserver_log, self._apiserver_ready)

    def stop_apiserver(self, *, kill: bool = False) -> None:
        """SIGTERM the server (graceful) or SIGKILL it (``kill``)."""
        self._require(self._apiserver, "apiserver").stop(self.stop_timeout, kill)

    def restart_apiserver(self, *, kill: bool = False) -> None:
        """Stop the server (``kill``: SIGKILL) and start it again on the same port; wait.

        Its namespaces and events survive, kept in the data folder's core store,
        as a real cluster's do in etcd.
        """
        self.stop_apiserver(kill=kill)
        self.start_apiserver()
        self._write_state()

    def make_kubeconfig(self, user: str, groups: Sequence[str] = ()) -> Path:
        """A client certificate (CN=user, O=each group) and a kubeconfig for it."""
        digest = hashlib.sha256("\0".join([user, *groups]).encode()).hexdigest()[:8]
        name = f"{_file_safe(user)}-{digest}"
        self._client_cert(name, _subject(user, groups))
        path = self._dir() / f"kubeconfig-{name}"
        self._write_kubeconfig(path, user, self._cert_credentials(name))
        return path

    def add_user(self, name: str, groups: Sequence[str] = ()) -> Identity:
        """A user with a fresh bearer token (and no certificate), and a kubeconfig using it.

        A service account's name (``system:serviceaccount:NS:NAME``) also gets the groups a
        real cluster gives it. The token is added to the server's token file, which the
        server reads again when it changes; this returns once the server accepts the token.
        The user may do only what RBAC bindings grant it (or everything, in
        ``system:masters``).
        """
        if not name or any(c in name for c in "\r\n"):
            raise ControlPlaneError(f"invalid user name {name!r}")
        all_groups = tuple(dict.fromkeys([*groups, *service_account_groups(name)]))
        token = secrets.token_urlsafe(32)
        line = token_file_line(token, name, str(uuid.uuid4()), all_groups)
        with _file_lock(self.token_file.with_name(f"{TOKEN_FILE}.lock")):
            text = self.token_file.read_text() if self.token_file.exists() else ""
            tmp = self.token_file.with_name(f".{TOKEN_FILE}.{os.getpid()}.tmp")
            tmp.write_text(text + line)
            tmp.chmod(0o600)
            tmp.replace(self.token_file)  # a new inode: the server sees the change at once
        digest = hashlib.sha256(token.encode()).hexdigest()[:8]
        path = self._dir() / f"kubeconfig-{_file_safe(name)}-{digest}"
        self._write_kubeconfig(path, name, {"token": token})
        self._wait_until(
            lambda: self._token_status(token) not in (None, 401),
            f"the server to accept the token of {name}",
            self.apiserver_log,
        )
        return Identity(name=name, groups=all_groups, token=token, kubeconfig=path)

    # -- internals ----------------------------------------------------------------------

    @staticmethod
    def _require(proc: _Process | None, name: str) -> _Process:
        if proc is None:
            raise ControlPlaneError(f"{name} is not part of a started control plane")
        return proc

    def _prepare_dir(self) -> None:
        if self.data_dir is None:
            self.data_dir = Path(tempfile.mkdtemp(prefix="job-operator-cp-")).resolve()
        d = self.data_dir
        d.mkdir(parents=True, exist_ok=True)
        entries = [e for e in d.iterdir() if e.name not in {DIR_MARKER, ".gitignore"}]
        if entries and not (d / DIR_MARKER).exists():
            raise ControlPlaneError(f"{d} is not empty and was not made by the control plane")
        for entry in entries:
            if entry.is_dir() and not entry.is_symlink():
                shutil.rmtree(entry)
            else:
                entry.unlink()
        (d / DIR_MARKER).touch()
        gitignore = d / ".gitignore"
        if not gitignore.exists():
            gitignore.write_text("# made by testenv.controlplane\n*\n")

    def _etcd_argv(self, tc: Toolchain) -> list[str]:
        peer = f"http://127.0.0.1:{self.etcd_peer_port}"
        return [
            str(tc.etcd),
            "--name=controlplane",
            f"--data-dir={self._dir() / 'etcd'}",
            f"--listen-client-urls={self.etcd_url}",
            f"--advertise-client-urls={self.etcd_url}",
            f"--listen-peer-urls={peer}",
            f"--initial-advertise-peer-urls={peer}",
            f"--initial-cluster=controlplane={peer}",
            *self.extra_etcd_args,
        ]

    def _apiserver_argv(self, tc: Toolchain) -> list[str]:
        pki = self.pki
        dead = self._dir() / "dead.kubeconfig"
        argv = [
            str(tc.apiserver),
            f"--etcd-servers={self.etcd_url}",
            f"--secure-port={self.apiserver_port}",
            "--bind-address=127.0.0.1",
            f"--tls-cert-file={pki / 'server.crt'}",
            f"--tls-private-key-file={pki / 'server.key'}",
            f"--client-ca-file={pki / 'ca.crt'}",
            "--authentication-skip-lookup",
            f"--authentication-kubeconfig={dead}",
            f"--authorization-kubeconfig={dead}",
            f"--kubeconfig={dead}",
            f"--disable-admission-plugins={','.join(DISABLED_ADMISSION_PLUGINS)}",
            f"--core-store={self._dir() / 'core-store.jsonl'}",
            f"--token-auth-file={self.token_file}",
            f"--bootstrap-policy={wrapper_dir().parent / BOOTSTRAP_POLICY}",
        ]
        if self.audit:
            argv += [
                f"--audit-log-path={self._dir() / 'audit.log'}",
                f"--audit-policy-file={self._dir() / 'audit-policy.yaml'}",
            ]
        return argv + self.extra_apiserver_args

    def _openssl(self, *args: str | Path, what: str) -> None:
        env = {**os.environ, "OPENSSL_CONF": str(self.pki / "openssl.cnf")}
        run_command(["openssl", *args], what=what, cwd=self.pki, env=env)

    def _new_key_csr(self, name: str, subject: str) -> None:
        self._openssl(
            "req", "-new", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", f"{name}.key", "-out", f"{name}.csr", "-subj", subject,
            what=f"openssl: key and request for {name}",
        )  # fmt: skip

    def _sign(self, name: str, extensions: str) -> None:
        ext = self.pki / f"{name}.ext"
        ext.write_text(extensions)
        self._openssl(
            "x509", "-req", "-in", f"{name}.csr", "-CA", "ca.crt", "-CAkey", "ca.key",
            "-set_serial", str(secrets.randbits(63)), "-days", "3650", "-sha256",
            "-extfile", ext.name, "-out", f"{name}.crt",
            what=f"openssl: signing {name}",
        )  # fmt: skip
        (self.pki / f"{name}.csr").unlink(missing_ok=True)

    def _client_cert(self, name: str, subject: str) -> None:
        self._new_key_csr(name, subject)
        self._sign(
            name,
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature\n"
            "extendedKeyUsage=clientAuth\n",
        )

    def _make_pki(self) -> None:
        mkdir_p(self.pki)
        (self.pki / "openssl.cnf").write_text(OPENSSL_CONF)
        self._openssl(
            "req", "-x509", "-newkey", "ec", "-pkeyopt", "ec_paramgen_curve:prime256v1",
            "-nodes", "-keyout", "ca.key", "-out", "ca.crt", "-days", "3650", "-sha256",
            "-subj", "/CN=job-operator-controlplane-ca",
            "-addext", "basicConstraints=critical,CA:TRUE",
            "-addext", "keyUsage=critical,keyCertSign,cRLSign,digitalSignature",
            what="openssl: the certificate authority",
        )  # fmt: skip
        self._new_key_csr("server", "/CN=localhost")
        self._sign(
            "server",
            "basicConstraints=CA:FALSE\nkeyUsage=critical,digitalSignature,keyEncipherment\n"
            "extendedKeyUsage=serverAuth\nsubjectAltName=IP:127.0.0.1,DNS:localhost\n",
        )
        self._client_cert("admin", "/O=system:masters/CN=admin")
        dead = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [{"name": "none", "cluster": {"server": "https://127.0.0.1:1"}}],
            "users": [{"name": "none", "user": {}}],
            "contexts": [{"name": "none", "context": {"cluster": "none", "user": "none"}}],
            "current-context": "none",
        }
        (self._dir() / "dead.kubeconfig").write_text(yaml.safe_dump(dead, sort_keys=False))
        ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
        ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
        self._ssl = ctx

    def _ca_context(self) -> ssl.SSLContext:
        """Trusts the server, presents no client certificate."""
        return ssl.create_default_context(cafile=str(self.pki / "ca.crt"))

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
            ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
            self._ssl = ctx
        return self._ssl

    def _cert_credentials(self, cert_name: str) -> dict[str, str]:
        return {
            "client-certificate": str(self.pki / f"{cert_name}.crt"),
            "client-key": str(self.pki / f"{cert_name}.key"),
        }

    def _write_kubeconfig(self, path: Path, user: str, credentials: dict[str, str]) -> None:
        name = "job-operator-controlplane"
        config = {
            "apiVersion": "v1",
            "kind": "Config",
            "clusters": [
                {
                    "name": name,
                    "cluster": {
                        "server": self.server_url,
                        "certificate-authority": str(self.pki / "ca.crt"),
                    },
                }
            ],
            "users": [{"name": user, "user": credentials}],
            "contexts": [{"name": name, "context": {"cluster": name, "user": user}}],
            "current-context": name,
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))
        path.chmod(0o600)

    def _http(
        self, url: str, *, method: str = "GET", body: object = None, token: str | None = None
    ) -> int | None:
        """The HTTP status of a request, or None if the server cannot be reached.

        As the admin (client certificate), or with ``token`` as that token's user.
        """
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        ctx: ssl.SSLContext | None = None
        if url.startswith("https:"):
            ctx = self._ssl_context() if token is None else self._ca_context()
        if token is not None:
            req.add_header("Authorization", f"Bearer {token}")
        try:
            with urllib.request.urlopen(req, timeout=5, context=ctx) as resp:
                resp.read()
                return int(resp.status)
        except urllib.error.HTTPError as e:
            return int(e.code)
        except (urllib.error.URLError, OSError, ssl.SSLError):
            return None

    def _request(self, method: str, path: str, body: object = None) -> int | None:
        return self._http(self.server_url + path, method=method, body=body)

    def _token_status(self, token: str) -> int | None:
        """The status of a discovery request with ``token``: 401 while the server rejects it."""
        return self._http(self.server_url + "/apis", token=token)

    def _etcd_healthy(self) -> bool:
        return self._http(self.etcd_url + "/health") == 200

    def _apiserver_ready(self) -> bool:
        # informer-sync never passes: the core informers' kubeconfig points nowhere on purpose.
        # Before the RBAC stand-ins are installed, the policy cannot be loaded either.
        skip = "" if self._policy_installed else f"&exclude={POLICY_READY_CHECK}"
        return (
            self._request("GET", f"/readyz?exclude=informer-sync{skip}") == 200
            and self._request("GET", "/apis") == 200
        )

    def _policy_ready(self) -> bool:
        """The RBAC objects are loaded and the aggregated roles have taken in their parts."""
        if self._request("GET", f"/readyz/{POLICY_READY_CHECK}") != 200:
            return False
        admin = self._get_json("/apis/rbac.authorization.k8s.io/v1/clusterroles/admin")
        return bool(admin and admin.get("rules"))

    def _get_json(self, path: str) -> dict[str, Any] | None:
        """A GET as the admin, parsed; None if it fails."""
        req = urllib.request.Request(self.server_url + path)
        try:
            with urllib.request.urlopen(req, timeout=5, context=self._ssl_context()) as resp:
                data = json.loads(resp.read())
        except (urllib.error.URLError, OSError, ssl.SSLError, ValueError):
            return None
        return data if isinstance(data, dict) else None

    def _wait(self, name: str, proc: _Process, log_path: Path, ready: Callable[[], bool]) -> None:
        def started() -> bool:
            code = proc.exit_code()
            if code is not None:
                raise ControlPlaneError(
                    f"{name} exited with code {code} while starting (log: {log_path})",
                    file_tail(log_path),
                )
            return ready()

        self._wait_until(started, f"{name} to be ready", log_path)

    def _wait_until(self, condition: Callable[[], bool], what: str, log_path: Path) -> None:
        """Poll ``condition`` until it holds, or fail after ``ready_timeout`` naming ``what``."""
        deadline = time.monotonic() + self.ready_timeout
        while not condition():
            if time.monotonic() >= deadline:
                raise ControlPlaneError(
                    f"timed out after {self.ready_timeout:.0f} s waiting for {what} "
                    f"(log: {log_path})",
                    file_tail(log_path),
                )
            time.sleep(0.1)

    def _write_state(self) -> None:
        if self._etcd is None or self._apiserver is None:
            return
        write_json_atomic(
            self._dir() / STATE_FILE,
            {
                "server_url": self.server_url,
                "kubeconfig": str(self.kubeconfig),
                "audit": self.audit,
                "ports": {
                    "etcd": self.etcd_port,
                    "etcd_peer": self.etcd_peer_port,
                    "apiserver": self.apiserver_port,
                },
                "toolchain": self.toolchain.to_json(),
                "processes": {"etcd": self._etcd.to_json(), "apiserver": self._apiserver.to_json()},
            },
        )


# --------------------------------------------------------------------------------------
# CLI.


def _cmd_up(args: argparse.Namespace) -> int:
    data_dir = Path(args.dir).resolve()
    if (data_dir / STATE_FILE).exists():
        old = ControlPlane.attach(data_dir)
        if old.running():
            stderr_log(f"already running at {old.server_url}")
            print(f"export KUBECONFIG={old.kubeconfig}")
            _explain_users(data_dir)
            return 0
        old.stop()
    toolchain = ensure_built()
    started = time.monotonic()
    cp = ControlPlane(toolchain, data_dir=data_dir, audit=args.audit)
    cp.start()
    cp.detach()
    stderr_log(
        f"up at {cp.server_url} in {time.monotonic() - started:.1f} s; "
        f"kubectl {toolchain.kubectl}; logs in {data_dir}"
    )
    print(f"export KUBECONFIG={cp.kubeconfig}")
    _explain_users(data_dir)
    return 0


def _explain_users(data_dir: Path) -> None:
    """Say (on stderr) which kubeconfig is the admin's and how to get a user's."""
    here = Path.cwd()
    shown = data_dir.relative_to(here) if data_dir.is_relative_to(here) else data_dir
    stderr_log(
        "that kubeconfig is the admin's (client certificate, group system:masters); "
        "for a user who may do only what RBAC grants, mint one: "
        f"{_python()} -m testenv.controlplane add-user NAME [--group G]... --dir {shown} "
        "prints the path of its kubeconfig (a bearer token)"
    )


def _python() -> str:
    """How to name this Python in a hint: relative to the working folder when inside it."""
    exe = Path(sys.executable)
    return str(exe.relative_to(Path.cwd())) if exe.is_relative_to(Path.cwd()) else "python"


def _cmd_add_user(args: argparse.Namespace) -> int:
    cp = ControlPlane.attach(Path(args.dir).resolve())
    if not cp.running():
        raise ControlPlaneError(f"no control plane is running in {args.dir} (make cluster-up)")
    identity = cp.add_user(args.name, args.group)
    print(identity.kubeconfig)
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    data_dir = Path(args.dir).resolve()
    if not (data_dir / STATE_FILE).exists():
        stderr_log(f"nothing running in {data_dir}")
        return 0
    cp = ControlPlane.attach(data_dir)
    cp.stop()
    stderr_log(f"stopped the control plane in {data_dir}")
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    tc = ensure_built(refresh=args.refresh)
    stderr_log(f"ready: {tc.apiserver}")
    return 0


def _cmd_kubectl_path(_: argparse.Namespace) -> int:
    print(ensure_built().kubectl)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m testenv.controlplane",
        description="A real Kubernetes API server (etcd + CRD API server) on this machine.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start one in the background; print export KUBECONFIG=...")
    up.add_argument("--dir", default=".controlplane", help="state folder (default .controlplane)")
    up.add_argument("--audit", action="store_true", help="write an audit log to DIR/audit.log")
    up.set_defaults(func=_cmd_up)
    add_user = sub.add_parser(
        "add-user",
        help="mint a user (bearer token) on the one started by up; print its kubeconfig's path",
    )
    add_user.add_argument("name", help="user name, e.g. alice or system:serviceaccount:NS:NAME")
    add_user.add_argument(
        "--group", action="append", default=[], help="a group of the user (repeatable)"
    )
    add_user.add_argument(
        "--dir", default=".controlplane", help="state folder (default .controlplane)"
    )
    add_user.set_defaults(func=_cmd_add_user)
    down = sub.add_parser("down", help="stop the one started by up")
    down.add_argument("--dir", default=".controlplane", help="state folder (default .controlplane)")
    down.set_defaults(func=_cmd_down)
    build = sub.add_parser("build", help="fetch and build unless cached")
    build.add_argument(
        "--refresh", action="store_true", help="check the package versions again and rebuild"
    )
    build.set_defaults(func=_cmd_build)
    kubectl = sub.add_parser("kubectl-path", help="print the path of the matching kubectl")
    kubectl.set_defaults(func=_cmd_kubectl_path)
    args = parser.parse_args(argv)
    try:
        return int(args.func(args))
    except ControlPlaneError as e:
        print(f"controlplane: {e.message}", file=sys.stderr)
        for line in e.output.splitlines():
            print(f"    {line}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        print("controlplane: interrupted", file=sys.stderr)
        return 130


if __name__ == "__main__":
    sys.exit(main())
