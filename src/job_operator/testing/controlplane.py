"""A real Kubernetes API server (etcd + the upstream CRD API server) for tests, demo and bench.

No Docker runs on our machines, so kind cannot start a cluster and no registry ships a
kube-apiserver binary. Debian's unstable suite carries the upstream apiextensions-apiserver
as Go source with all its dependencies, a Go toolchain, etcd and kubectl 1.36; this module

- fetches those packages into a private cache with apt (never touching the system's apt
  configuration or state) and builds ``hack/controlplane/wrapper/main.go`` against them
  (:func:`ensure_built`), once per set of package versions and wrapper source;
- starts etcd and the server on free loopback ports with fresh certificates and writes a
  kubeconfig for them (:class:`ControlPlane`);
- offers a small CLI: ``python -m job_operator.testing.controlplane up|down|build|kubectl-path``.

See hack/controlplane/README.md for the why and the cache layout.
"""

from __future__ import annotations

import argparse
import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
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
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Final, NamedTuple, Self

import yaml

__all__ = [
    "DEFAULT_AUDIT_POLICY",
    "AptSource",
    "ControlPlane",
    "ControlPlaneError",
    "Toolchain",
    "cache_key",
    "ensure_built",
    "find_debian_mirror",
    "main",
    "parse_deb822_sources",
    "parse_one_line_sources",
]

# Bump when the build steps below change in a way that should invalidate cached builds.
BUILD_RECIPE: Final = "1"
SUITE: Final = "sid"
GO_MINOR: Final = "1.27"
# Roots of the package closure: the server's Go source (which pulls in its dependencies),
# the Go toolchain, etcd and kubectl.
ROOT_PACKAGES: Final = (
    "golang-k8s-apiextensions-apiserver-dev",
    f"golang-{GO_MINOR}-go",
    "etcd-server",
    "kubectl",
)
# Of the closure, only these are fetched: the Go world, etcd and kubectl (no libc etc.).
NON_GO_PACKAGES: Final = frozenset({"etcd-server", "kubectl"})
GO_IMPORT_PATH: Final = "job-operator.dev/controlplane"
WRAPPER_RELPATH: Final = Path("hack/controlplane/wrapper/main.go")
KEEP_BUILDS: Final = 3
DEBIAN_SUITES: Final = frozenset(
    {
        "sid",
        "unstable",
        "experimental",
        "testing",
        "stable",
        "oldstable",
        "oldoldstable",
        "stretch",
        "buster",
        "bullseye",
        "bookworm",
        "trixie",
        "forky",
        "duke",
    }
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
OUTPUT_TAIL_LINES: Final = 25
DIR_MARKER: Final = ".job-operator-controlplane"
STATE_FILE: Final = "state.json"

Log = Callable[[str], None]


class ControlPlaneError(Exception):
    """Fetching, building, starting or stopping the control plane failed.

    ``message`` is one sentence; ``output`` the tail of the failing command's output.
    """

    def __init__(self, message: str, output: str = "") -> None:
        super().__init__(message)
        self.message = message
        self.output = output

    def __str__(self) -> str:
        if not self.output:
            return self.message
        return f"{self.message}\n{self.output}"


def _tail(text: str, lines: int = OUTPUT_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def _file_tail(path: Path, lines: int = OUTPUT_TAIL_LINES) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            return _tail(f.read().decode("utf-8", "replace"), lines)
    except OSError:
        return ""


def _stderr_log(message: str) -> None:
    print(f"controlplane: {message}", file=sys.stderr, flush=True)


def _run(
    argv: Sequence[str | Path],
    *,
    what: str,
    cwd: Path | None = None,
    env: Mapping[str, str] | None = None,
    log_file: Path | None = None,
) -> str:
    """Run a command to completion, returning its merged output; raise ControlPlaneError."""
    args = [str(a) for a in argv]
    try:
        proc = subprocess.run(
            args,
            cwd=cwd,
            env=None if env is None else dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            check=False,
        )
    except FileNotFoundError as e:
        raise ControlPlaneError(f"{what} failed: {args[0]} is not installed") from e
    output = proc.stdout.decode("utf-8", "replace")
    if log_file is not None:
        log_file.parent.mkdir(parents=True, exist_ok=True)
        log_file.write_text(f"$ {' '.join(args)}\n{output}")
    if proc.returncode != 0:
        where = f" (full output: {log_file})" if log_file is not None else ""
        raise ControlPlaneError(
            f"{what} failed with exit code {proc.returncode}{where}", _tail(output)
        )
    return output


# --------------------------------------------------------------------------------------
# Which Debian mirror: the one the system's own apt sources name.


class AptSource(NamedTuple):
    """One URI of an enabled ``deb`` entry of an apt sources file."""

    uri: str
    suites: tuple[str, ...]


def parse_deb822_sources(text: str) -> list[AptSource]:
    """The enabled ``deb`` URIs of a deb822 ``.sources`` file, in order."""
    sources: list[AptSource] = []
    for stanza in re.split(r"\n[ \t]*\n", text):
        fields: dict[str, str] = {}
        current: str | None = None
        for raw in stanza.splitlines():
            if raw.lstrip().startswith("#") or not raw.strip():
                continue
            if raw[0] in " \t" and current is not None:
                fields[current] += " " + raw.strip()
                continue
            name, sep, value = raw.partition(":")
            if not sep:
                continue
            current = name.strip().lower()
            fields[current] = value.strip()
        if "deb" not in fields.get("types", "").split():
            continue
        if fields.get("enabled", "yes").strip().lower() in {"no", "false", "0"}:
            continue
        suites = tuple(fields.get("suites", "").split())
        sources.extend(AptSource(uri, suites) for uri in fields.get("uris", "").split())
    return sources


def parse_one_line_sources(text: str) -> list[AptSource]:
    """The ``deb`` URIs of a one-line-style ``sources.list``, in order."""
    sources: list[AptSource] = []
    for raw in text.splitlines():
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        # Options in brackets may contain spaces: cut them out first.
        line = re.sub(r"\[[^\]]*\]", " ", line)
        words = line.split()
        if len(words) < 3 or words[0] != "deb":
            continue
        sources.append(AptSource(words[1], (words[2],)))
    return sources


def _is_debian_archive(source: AptSource) -> bool:
    uri = source.uri.rstrip("/")
    if not re.match(r"https?://", uri):
        return False
    if "security" in uri.rsplit("/", 1)[-1] or any("security" in s for s in source.suites):
        return False
    if uri.endswith("/debian"):
        return True
    return any(s.split("-", 1)[0].split("/", 1)[0] in DEBIAN_SUITES for s in source.suites)


def find_debian_mirror(etc_apt: Path = Path("/etc/apt")) -> str:
    """The first Debian archive URI (not -security) of the system's apt sources.

    ``$JOB_OPERATOR_DEBIAN_MIRROR`` overrides it.
    """
    override = os.environ.get("JOB_OPERATOR_DEBIAN_MIRROR")
    if override:
        return override.rstrip("/")
    candidates: list[AptSource] = []
    main_list = etc_apt / "sources.list"
    with contextlib.suppress(OSError):
        candidates += parse_one_line_sources(main_list.read_text())
    parts = etc_apt / "sources.list.d"
    for path in sorted(parts.glob("*")) if parts.is_dir() else []:
        try:
            text = path.read_text()
        except OSError:
            continue
        if path.suffix == ".sources":
            candidates += parse_deb822_sources(text)
        elif path.suffix == ".list":
            candidates += parse_one_line_sources(text)
    for source in candidates:
        if _is_debian_archive(source):
            return source.uri.rstrip("/")
    raise ControlPlaneError(
        f"no Debian archive mirror found in {main_list} or {parts}; "
        "set JOB_OPERATOR_DEBIAN_MIRROR to one"
    )


# --------------------------------------------------------------------------------------
# The private apt: a sources list, lists and caches of our own.


class _Apt:
    def __init__(self, base: Path, mirror: str) -> None:
        self.dir = base / "apt"
        self.mirror = mirror
        for sub in ("lists/partial", "cache/archives/partial"):
            (self.dir / sub).mkdir(parents=True, exist_ok=True)
        self.sources = self.dir / "sources.list"
        self.sources.write_text(f"deb {mirror} {SUITE} main\n")
        # An empty dpkg status: candidates come from sid alone, whatever the machine has.
        self.status = self.dir / "status"
        self.status.touch()

    def options(self) -> list[str]:
        opts = {
            "Dir::Etc::SourceList": str(self.sources),
            "Dir::Etc::SourceParts": "/dev/null",
            "Dir::State::Lists": str(self.dir / "lists"),
            "Dir::State::status": str(self.status),
            "Dir::Cache": str(self.dir / "cache"),
            "Dir::Cache::Archives": str(self.dir / "cache/archives"),
            "Debug::NoLocking": "1",
            "APT::Get::List-Cleanup": "1",
        }
        if os.geteuid() == 0:
            opts["APT::Sandbox::User"] = "root"
        return [arg for key, value in opts.items() for arg in ("-o", f"{key}={value}")]

    def update(self, logs: Path) -> None:
        _run(
            ["apt-get", *self.options(), "update"],
            what=f"apt-get update of the private {SUITE} package list from {self.mirror}",
            log_file=logs / "apt-update.log",
        )

    def closure(self, roots: Sequence[str], logs: Path) -> list[str]:
        out = _run(
            [
                "apt-cache",
                *self.options(),
                "depends",
                "--recurse",
                "--no-recommends",
                "--no-suggests",
                "--no-conflicts",
                "--no-breaks",
                "--no-replaces",
                "--no-enhances",
                *roots,
            ],
            what="apt-cache depends (the package closure)",
            log_file=logs / "apt-depends.log",
        )
        return select_closure(out.splitlines())

    def candidates(self, names: Sequence[str], logs: Path) -> dict[str, str]:
        out = _run(
            ["apt-cache", *self.options(), "policy", *names],
            what="apt-cache policy (the package versions)",
            log_file=logs / "apt-policy.log",
        )
        versions = parse_policy(out)
        missing = [n for n in names if versions.get(n) in (None, "(none)")]
        if missing:
            raise ControlPlaneError(
                f"{SUITE} at {self.mirror} has no candidate for: {', '.join(missing)}"
            )
        return {n: versions[n] for n in names}

    def download(self, packages: Mapping[str, str], dest: Path, logs: Path) -> list[Path]:
        """Make sure ``dest`` holds the .deb of every package=version; return their paths."""
        dest.mkdir(parents=True, exist_ok=True)
        missing = [n for n, v in packages.items() if _find_deb(dest, n, v) is None]
        if missing:
            staging = Path(tempfile.mkdtemp(prefix=".download-", dir=dest))
            try:
                _run(
                    [
                        "apt-get",
                        *self.options(),
                        "download",
                        *(f"{n}={packages[n]}" for n in sorted(missing)),
                    ],
                    what=f"apt-get download of {len(missing)} packages",
                    cwd=staging,
                    log_file=logs / "apt-download.log",
                )
                for fetched in staging.glob("*.deb"):
                    fetched.replace(dest / fetched.name)
            finally:
                shutil.rmtree(staging, ignore_errors=True)
        debs: list[Path] = []
        for name, version in sorted(packages.items()):
            found = _find_deb(dest, name, version)
            if found is None:
                raise ControlPlaneError(f"apt-get download left no .deb for {name}={version}")
            debs.append(found)
        return debs


def select_closure(lines: Iterable[str]) -> list[str]:
    """Package names out of ``apt-cache depends --recurse`` output: the Go world, etcd, kubectl."""
    names: set[str] = set()
    for line in lines:
        if not line or line[0].isspace() or "<" in line:
            continue
        name = line.strip()
        if name.startswith("golang") or name in NON_GO_PACKAGES:
            names.add(name)
    return sorted(names)


def parse_policy(text: str) -> dict[str, str]:
    """``{package: candidate version}`` from ``apt-cache policy`` output."""
    versions: dict[str, str] = {}
    current: str | None = None
    for line in text.splitlines():
        if line and not line[0].isspace() and line.rstrip().endswith(":"):
            current = line.rstrip()[:-1]
        elif current is not None and line.strip().startswith("Candidate:"):
            versions[current] = line.split(":", 1)[1].strip()
    return versions


def _deb_version(version: str) -> str:
    return version.replace(":", "%3a")


def _find_deb(folder: Path, name: str, version: str) -> Path | None:
    return next(iter(sorted(folder.glob(f"{name}_{_deb_version(version)}_*.deb"))), None)


def cache_key(packages: Mapping[str, str], wrapper_source: bytes) -> str:
    """sha256 over the sorted ``package=version`` list, the wrapper source and the recipe."""
    h = hashlib.sha256()
    h.update(f"recipe={BUILD_RECIPE}\n".encode())
    for name in sorted(packages):
        h.update(f"{name}={packages[name]}\n".encode())
    h.update(b"\0")
    h.update(wrapper_source)
    return h.hexdigest()


def packages_key(packages: Mapping[str, str]) -> str:
    """sha256 over the sorted ``package=version`` list alone (the extracted tree's key)."""
    h = hashlib.sha256()
    for name in sorted(packages):
        h.update(f"{name}={packages[name]}\n".encode())
    return h.hexdigest()


def wrapper_key(wrapper_source: bytes) -> str:
    """The key of the "latest build for this wrapper" pointer."""
    return hashlib.sha256(f"recipe={BUILD_RECIPE}\n".encode() + wrapper_source).hexdigest()


# --------------------------------------------------------------------------------------
# The build.


@dataclasses.dataclass(frozen=True)
class Toolchain:
    """The built binaries: etcd, the API server and a kubectl of the same minor."""

    etcd: Path
    apiserver: Path
    kubectl: Path
    key: str

    @classmethod
    def from_build_dir(cls, build_dir: Path) -> Toolchain | None:
        try:
            manifest = json.loads((build_dir / "manifest.json").read_text())
        except (OSError, ValueError):
            return None
        bin_dir = build_dir / "bin"
        tc = cls(
            etcd=bin_dir / "etcd",
            apiserver=bin_dir / "controlplane",
            kubectl=bin_dir / "kubectl",
            key=str(manifest.get("key", "")),
        )
        if all(os.access(p, os.X_OK) for p in (tc.etcd, tc.apiserver, tc.kubectl)):
            return tc
        return None

    def to_json(self) -> dict[str, str]:
        return {k: str(v) for k, v in dataclasses.asdict(self).items()}

    @classmethod
    def from_json(cls, data: Mapping[str, str]) -> Toolchain:
        return cls(
            etcd=Path(data["etcd"]),
            apiserver=Path(data["apiserver"]),
            kubectl=Path(data["kubectl"]),
            key=data["key"],
        )


def default_cache_dir() -> Path:
    """``$JOB_OPERATOR_CACHE``, else ``$XDG_CACHE_HOME/job-operator`` (``~/.cache/...``)."""
    env = os.environ.get("JOB_OPERATOR_CACHE")
    if env:
        return Path(env).expanduser().resolve()
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return (base / "job-operator").resolve()


def wrapper_source_path() -> Path:
    """Where the wrapper's main.go is: ``$JOB_OPERATOR_WRAPPER_SRC`` or the repository's."""
    env = os.environ.get("JOB_OPERATOR_WRAPPER_SRC")
    candidates = [Path(env)] if env else []
    candidates += [
        Path(__file__).resolve().parents[3] / WRAPPER_RELPATH,
        Path.cwd() / WRAPPER_RELPATH,
    ]
    for path in candidates:
        if path.is_file():
            return path
    raise ControlPlaneError(
        f"the wrapper source {WRAPPER_RELPATH} was not found "
        "(install job-operator editable from its repository, or set JOB_OPERATOR_WRAPPER_SRC)"
    )


@contextlib.contextmanager
def _file_lock(path: Path, log: Log) -> Iterator[None]:
    path.parent.mkdir(parents=True, exist_ok=True)
    with path.open("a+") as f:
        try:
            fcntl.flock(f, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            log(f"another process holds {path}; waiting for its build to finish")
            fcntl.flock(f, fcntl.LOCK_EX)
        try:
            yield
        finally:
            fcntl.flock(f, fcntl.LOCK_UN)


def _write_json_atomic(path: Path, data: object) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    tmp.write_text(json.dumps(data, indent=2, sort_keys=True) + "\n")
    tmp.replace(path)


def _link_or_copy(src: Path, dst: Path) -> None:
    dst.unlink(missing_ok=True)
    try:
        os.link(src, dst)
    except OSError:
        shutil.copy2(src, dst)


class _Cache:
    def __init__(self, base: Path) -> None:
        self.base = base
        self.lock = base / "lock"
        self.logs = base / "logs"
        self.debs = base / "debs"
        self.roots = base / "roots"
        self.builds = base / "builds"
        self.latest = base / "latest"
        self.gocache = base / "gocache"
        self.gopath = base / "gopath"

    def pointer(self, wrapper_hash: str) -> Path:
        return self.latest / f"{wrapper_hash[:16]}.json"

    def load_latest(self, wrapper_hash: str) -> Toolchain | None:
        try:
            data = json.loads(self.pointer(wrapper_hash).read_text())
        except (OSError, ValueError):
            return None
        return Toolchain.from_build_dir(self.builds / str(data.get("build", "")))

    def clean_partials(self) -> None:
        for parent in (self.roots, self.builds, self.debs):
            for leftover in parent.glob(".*-tmp*") if parent.is_dir() else []:
                shutil.rmtree(leftover, ignore_errors=True)
            for leftover in parent.glob(".download-*") if parent.is_dir() else []:
                shutil.rmtree(leftover, ignore_errors=True)

    def prune(self, keep_root: Path, keep_debs: Iterable[Path], log: Log) -> None:
        for root in self.roots.iterdir():
            if root != keep_root:
                log(f"removing the outdated extracted tree {root}")
                shutil.rmtree(root, ignore_errors=True)
        keep = {p.name for p in keep_debs}
        for deb in self.debs.glob("*.deb"):
            if deb.name not in keep:
                deb.unlink(missing_ok=True)
        builds = sorted(
            (b for b in self.builds.iterdir() if not b.name.startswith(".")),
            key=lambda b: b.stat().st_mtime,
            reverse=True,
        )
        for old in builds[KEEP_BUILDS:]:
            shutil.rmtree(old, ignore_errors=True)
        for pointer in self.latest.glob("*.json"):
            try:
                build = str(json.loads(pointer.read_text()).get("build", ""))
            except (OSError, ValueError):
                build = ""
            if not build or not (self.builds / build).is_dir():
                pointer.unlink(missing_ok=True)


def ensure_built(
    cache_dir: Path | None = None, *, refresh: bool = False, log: Log | None = None
) -> Toolchain:
    """Fetch and build the control plane unless the cache already has it; return its binaries.

    With a build for the current wrapper source in the cache, this returns at once (no apt
    at all) unless ``refresh``: then it updates the package list and rebuilds if any package
    version changed.
    """
    say = log or _stderr_log
    cache = _Cache((cache_dir or default_cache_dir()) / "controlplane")
    source = wrapper_source_path().read_bytes()
    wrapper_hash = wrapper_key(source)
    if not refresh and (tc := cache.load_latest(wrapper_hash)) is not None:
        return tc
    with _file_lock(cache.lock, say):
        if not refresh and (tc := cache.load_latest(wrapper_hash)) is not None:
            return tc
        return _build(cache, source, wrapper_hash, say)


def _build(cache: _Cache, source: bytes, wrapper_hash: str, say: Log) -> Toolchain:
    for tool in ("apt-get", "apt-cache", "dpkg"):
        if shutil.which(tool) is None:
            raise ControlPlaneError(
                f"{tool} is not available: the control plane is built from Debian packages, "
                "so it needs a Debian-based machine"
            )
    cache.clean_partials()
    mirror = find_debian_mirror()
    apt = _Apt(cache.base, mirror)
    say(f"updating the private package list ({SUITE} from {mirror})")
    apt.update(cache.logs)
    names = apt.closure(ROOT_PACKAGES, cache.logs)
    packages = apt.candidates(names, cache.logs)
    key = cache_key(packages, source)
    build_dir = cache.builds / key[:16]
    if (tc := Toolchain.from_build_dir(build_dir)) is not None:
        _write_json_atomic(cache.pointer(wrapper_hash), {"build": build_dir.name})
        return tc

    say(f"fetching {len(packages)} packages into {cache.debs}")
    debs = apt.download(packages, cache.debs, cache.logs)

    root = cache.roots / packages_key(packages)[:16]
    if not (root / ".complete").exists():
        say(f"extracting {len(debs)} packages into {root}")
        shutil.rmtree(root, ignore_errors=True)
        tmp_root = Path(tempfile.mkdtemp(prefix=f".{root.name}-tmp", dir=_mkdir(cache.roots)))
        for deb in debs:
            _run(["dpkg", "-x", deb, tmp_root], what=f"dpkg -x {deb.name}")
        (tmp_root / ".complete").touch()
        tmp_root.chmod(0o755)
        tmp_root.rename(root)

    say("building the API server (minutes when cold; seconds with a warm Go cache)")
    started = time.monotonic()
    tmp_build = Path(tempfile.mkdtemp(prefix=f".{build_dir.name}-tmp", dir=_mkdir(cache.builds)))
    bin_dir = _mkdir(tmp_build / "bin")
    pkg_dir = _mkdir(cache.gopath / "src" / GO_IMPORT_PATH)
    (pkg_dir / "main.go").write_bytes(source)
    goroot = root / f"usr/lib/go-{GO_MINOR}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GO")}
    env.update(
        GO111MODULE="off",
        GOPATH=f"{cache.gopath}:{root / 'usr/share/gocode'}",
        GOROOT=str(goroot),
        GOTOOLCHAIN="local",
        CGO_ENABLED="0",
        GOCACHE=str(_mkdir(cache.gocache)),
        GOFLAGS="",
        GOENV="off",
        GOPROXY="off",
        GOTELEMETRY="off",
    )
    _run(
        [goroot / "bin/go", "build", "-o", bin_dir / "controlplane", GO_IMPORT_PATH],
        what="building the API server wrapper",
        env=env,
        log_file=cache.logs / f"build-{key[:16]}.log",
    )
    for name, rel in (("etcd", "usr/bin/etcd"), ("kubectl", "usr/bin/kubectl")):
        if not (root / rel).is_file():
            raise ControlPlaneError(f"the extracted packages have no {rel}")
        _link_or_copy(root / rel, bin_dir / name)
    _write_json_atomic(
        tmp_build / "manifest.json",
        {
            "key": key,
            "packages": packages,
            "wrapper_sha256": hashlib.sha256(source).hexdigest(),
            "recipe": BUILD_RECIPE,
            "built": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            "build_seconds": round(time.monotonic() - started, 1),
        },
    )
    tmp_build.chmod(0o755)  # mkdtemp makes it 0700
    shutil.rmtree(build_dir, ignore_errors=True)
    tmp_build.rename(build_dir)
    _write_json_atomic(cache.pointer(wrapper_hash), {"build": build_dir.name})
    cache.prune(root, debs, say)
    tc = Toolchain.from_build_dir(build_dir)
    if tc is None:
        raise ControlPlaneError(f"the build in {build_dir} is incomplete")
    say(f"built in {time.monotonic() - started:.0f} s: {build_dir}")
    return tc


def _mkdir(path: Path) -> Path:
    path.mkdir(parents=True, exist_ok=True)
    return path


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
        self._log = log or _stderr_log
        self.etcd_port = 0
        self.etcd_peer_port = 0
        self.apiserver_port = 0
        self._etcd: _Process | None = None
        self._apiserver: _Process | None = None
        self._ssl: ssl.SSLContext | None = None

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
            self._write_kubeconfig(self.kubeconfig, "admin", "admin")
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
        """Serve the built-in APIs the operator needs beyond CRDs: coordination.k8s.io
        Leases (leader election), by a CRD with the same group, version and fields."""
        crd = wrapper_source_path().parents[1] / "leases-crd.yaml"
        base: list[str | Path] = [self.kubectl, f"--kubeconfig={self.kubeconfig}"]
        _run([*base, "apply", "-f", crd], what="installing the Lease stand-in CRD")
        _run(
            [
                *base,
                "wait",
                "--for=condition=Established",
                "--timeout=60s",
                "crd/leases.coordination.k8s.io",
            ],
            what="waiting for the Lease stand-in CRD",
        )

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
        safe = re.sub(r"[^A-Za-z0-9_.-]", "_", user)
        digest = hashlib.sha256("\0".join([user, *groups]).encode()).hexdigest()[:8]
        name = f"{safe}-{digest}"
        self._client_cert(name, _subject(user, groups))
        path = self._dir() / f"kubeconfig-{name}"
        self._write_kubeconfig(path, name, user)
        return path

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
            gitignore.write_text("# made by job_operator.testing.controlplane\n*\n")

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
        ]
        if self.audit:
            argv += [
                f"--audit-log-path={self._dir() / 'audit.log'}",
                f"--audit-policy-file={self._dir() / 'audit-policy.yaml'}",
            ]
        return argv + self.extra_apiserver_args

    def _openssl(self, *args: str | Path, what: str) -> None:
        env = {**os.environ, "OPENSSL_CONF": str(self.pki / "openssl.cnf")}
        _run(["openssl", *args], what=what, cwd=self.pki, env=env)

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
        _mkdir(self.pki)
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

    def _ssl_context(self) -> ssl.SSLContext:
        if self._ssl is None:
            ctx = ssl.create_default_context(cafile=str(self.pki / "ca.crt"))
            ctx.load_cert_chain(str(self.pki / "admin.crt"), str(self.pki / "admin.key"))
            self._ssl = ctx
        return self._ssl

    def _write_kubeconfig(self, path: Path, cert_name: str, user: str) -> None:
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
            "users": [
                {
                    "name": user,
                    "user": {
                        "client-certificate": str(self.pki / f"{cert_name}.crt"),
                        "client-key": str(self.pki / f"{cert_name}.key"),
                    },
                }
            ],
            "contexts": [{"name": name, "context": {"cluster": name, "user": user}}],
            "current-context": name,
        }
        path.write_text(yaml.safe_dump(config, sort_keys=False))

    def _http(self, url: str, *, method: str = "GET", body: object = None) -> int | None:
        """The HTTP status of a request, or None if the server cannot be reached."""
        data = None if body is None else json.dumps(body).encode()
        req = urllib.request.Request(url, data=data, method=method)
        if data is not None:
            req.add_header("Content-Type", "application/json")
        ctx = self._ssl_context() if url.startswith("https:") else None
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

    def _etcd_healthy(self) -> bool:
        return self._http(self.etcd_url + "/health") == 200

    def _apiserver_ready(self) -> bool:
        # informer-sync never passes: the core informers' kubeconfig points nowhere on purpose.
        return (
            self._request("GET", "/readyz?exclude=informer-sync") == 200
            and self._request("GET", "/apis") == 200
        )

    def _wait(self, name: str, proc: _Process, log_path: Path, ready: Callable[[], bool]) -> None:
        deadline = time.monotonic() + self.ready_timeout
        while True:
            code = proc.exit_code()
            if code is not None:
                raise ControlPlaneError(
                    f"{name} exited with code {code} while starting (log: {log_path})",
                    _file_tail(log_path),
                )
            if ready():
                return
            if time.monotonic() >= deadline:
                raise ControlPlaneError(
                    f"{name} was not ready within {self.ready_timeout:.0f} s (log: {log_path})",
                    _file_tail(log_path),
                )
            time.sleep(0.1)

    def _write_state(self) -> None:
        if self._etcd is None or self._apiserver is None:
            return
        _write_json_atomic(
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
            _stderr_log(f"already running at {old.server_url}")
            print(f"export KUBECONFIG={old.kubeconfig}")
            return 0
        old.stop()
    toolchain = ensure_built()
    started = time.monotonic()
    cp = ControlPlane(toolchain, data_dir=data_dir, audit=args.audit)
    cp.start()
    cp.detach()
    _stderr_log(
        f"up at {cp.server_url} in {time.monotonic() - started:.1f} s; "
        f"kubectl {toolchain.kubectl}; logs in {data_dir}"
    )
    print(f"export KUBECONFIG={cp.kubeconfig}")
    return 0


def _cmd_down(args: argparse.Namespace) -> int:
    data_dir = Path(args.dir).resolve()
    if not (data_dir / STATE_FILE).exists():
        _stderr_log(f"nothing running in {data_dir}")
        return 0
    cp = ControlPlane.attach(data_dir)
    cp.stop()
    _stderr_log(f"stopped the control plane in {data_dir}")
    return 0


def _cmd_build(args: argparse.Namespace) -> int:
    tc = ensure_built(refresh=args.refresh)
    _stderr_log(f"ready: {tc.apiserver}")
    return 0


def _cmd_kubectl_path(_: argparse.Namespace) -> int:
    print(ensure_built().kubectl)
    return 0


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(
        prog="python -m job_operator.testing.controlplane",
        description="A real Kubernetes API server (etcd + CRD API server) on this machine.",
    )
    sub = parser.add_subparsers(dest="command", required=True)
    up = sub.add_parser("up", help="start one in the background; print export KUBECONFIG=...")
    up.add_argument("--dir", default=".controlplane", help="state folder (default .controlplane)")
    up.add_argument("--audit", action="store_true", help="write an audit log to DIR/audit.log")
    up.set_defaults(func=_cmd_up)
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
