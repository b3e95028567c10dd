"""Fetch and build the test API server from Debian's packages, once per set of versions.

No Docker runs on our machines, so kind cannot start a cluster and no registry ships a
kube-apiserver binary. Debian's unstable suite carries the upstream apiextensions-apiserver
as Go source with all its dependencies, a Go toolchain, etcd and kubectl 1.36. This module
fetches those packages into a private cache with apt (never touching the system's apt
configuration or state) and builds the wrapper in ``hack/controlplane/wrapper/`` against them
(:func:`ensure_built`), once per set of package versions and wrapper source.
Running what it built is :mod:`testenv.controlplane`'s part.

See hack/controlplane/README.md for the why and the cache layout.
"""

from __future__ import annotations

import contextlib
import dataclasses
import datetime
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from pathlib import Path
from typing import Final, NamedTuple

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
WRAPPER_RELPATH: Final = Path("hack/controlplane/wrapper")
KEEP_BUILDS: Final = 3
# Builds used this recently are kept whatever their number: processes on this machine (other
# checkouts, other test sessions) may be running them.
KEEP_USED_SECONDS: Final = 24 * 3600
USED_MARKER: Final = "last-used"
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
OUTPUT_TAIL_LINES: Final = 25

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


def tail(text: str, lines: int = OUTPUT_TAIL_LINES) -> str:
    return "\n".join(text.rstrip().splitlines()[-lines:])


def file_tail(path: Path, lines: int = OUTPUT_TAIL_LINES) -> str:
    try:
        with path.open("rb") as f:
            f.seek(0, os.SEEK_END)
            f.seek(max(0, f.tell() - 64 * 1024))
            return tail(f.read().decode("utf-8", "replace"), lines)
    except OSError:
        return ""


def stderr_log(message: str) -> None:
    print(f"controlplane: {message}", file=sys.stderr, flush=True)


def run_command(
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
            f"{what} failed with exit code {proc.returncode}{where}", tail(output)
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
        run_command(
            ["apt-get", *self.options(), "update"],
            what=f"apt-get update of the private {SUITE} package list from {self.mirror}",
            log_file=logs / "apt-update.log",
        )

    def closure(self, roots: Sequence[str], logs: Path) -> list[str]:
        out = run_command(
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
        out = run_command(
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
                run_command(
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


def wrapper_dir() -> Path:
    """The wrapper's Go package folder: ``$JOB_OPERATOR_WRAPPER_SRC`` or the repository's."""
    env = os.environ.get("JOB_OPERATOR_WRAPPER_SRC")
    candidates = [Path(env)] if env else []
    candidates += [
        Path(__file__).resolve().parents[1] / WRAPPER_RELPATH,
        Path.cwd() / WRAPPER_RELPATH,
    ]
    for path in candidates:
        if (path / "main.go").is_file():
            return path
    raise ControlPlaneError(
        f"the wrapper source {WRAPPER_RELPATH}/main.go was not found "
        "(run from the repository, or set JOB_OPERATOR_WRAPPER_SRC to its folder)"
    )


def wrapper_files(folder: Path) -> dict[str, bytes]:
    """The wrapper package's files (its Go sources), by name."""
    return {
        path.name: path.read_bytes()
        for path in sorted(folder.iterdir())
        if path.is_file() and path.suffix == ".go" and not path.name.endswith("_test.go")
    }


def wrapper_source(files: Mapping[str, bytes]) -> bytes:
    """One byte string for the whole package (names and contents), for the cache keys."""
    return b"".join(name.encode() + b"\0" + data + b"\0" for name, data in sorted(files.items()))


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


def write_json_atomic(path: Path, data: object) -> None:
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
        build_dir = self.builds / str(data.get("build", ""))
        tc = Toolchain.from_build_dir(build_dir)
        if tc is not None:
            mark_used(build_dir)
        return tc

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
            key=last_used,
            reverse=True,
        )
        now = time.time()
        for old in builds[KEEP_BUILDS:]:
            if now - last_used(old) > KEEP_USED_SECONDS:
                shutil.rmtree(old, ignore_errors=True)
        for pointer in self.latest.glob("*.json"):
            try:
                build = str(json.loads(pointer.read_text()).get("build", ""))
            except (OSError, ValueError):
                build = ""
            if not build or not (self.builds / build).is_dir():
                pointer.unlink(missing_ok=True)


def mark_used(build_dir: Path) -> None:
    """Record that a build is being used (its marker's modification time)."""
    with contextlib.suppress(OSError):
        (build_dir / USED_MARKER).touch()


def last_used(build_dir: Path) -> float:
    """When a build was last used (or made), as a timestamp; 0 if it is gone."""
    for path in (build_dir / USED_MARKER, build_dir):
        with contextlib.suppress(OSError):
            return path.stat().st_mtime
    return 0.0


def ensure_built(
    cache_dir: Path | None = None, *, refresh: bool = False, log: Log | None = None
) -> Toolchain:
    """Fetch and build the control plane unless the cache already has it; return its binaries.

    With a build for the current wrapper source in the cache, this returns at once (no apt
    at all) unless ``refresh``: then it updates the package list and rebuilds if any package
    version changed.
    """
    say = log or stderr_log
    cache = _Cache((cache_dir or default_cache_dir()) / "controlplane")
    files = wrapper_files(wrapper_dir())
    source = wrapper_source(files)
    wrapper_hash = wrapper_key(source)
    if not refresh and (tc := cache.load_latest(wrapper_hash)) is not None:
        return tc
    with _file_lock(cache.lock, say):
        if not refresh and (tc := cache.load_latest(wrapper_hash)) is not None:
            return tc
        return _build(cache, files, wrapper_hash, say)


def _build(cache: _Cache, files: Mapping[str, bytes], wrapper_hash: str, say: Log) -> Toolchain:
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
    source = wrapper_source(files)
    key = cache_key(packages, source)
    build_dir = cache.builds / key[:16]
    if (tc := Toolchain.from_build_dir(build_dir)) is not None:
        write_json_atomic(cache.pointer(wrapper_hash), {"build": build_dir.name})
        mark_used(build_dir)
        return tc

    say(f"fetching {len(packages)} packages into {cache.debs}")
    debs = apt.download(packages, cache.debs, cache.logs)

    root = cache.roots / packages_key(packages)[:16]
    if not (root / ".complete").exists():
        say(f"extracting {len(debs)} packages into {root}")
        shutil.rmtree(root, ignore_errors=True)
        tmp_root = Path(tempfile.mkdtemp(prefix=f".{root.name}-tmp", dir=mkdir_p(cache.roots)))
        for deb in debs:
            run_command(["dpkg", "-x", deb, tmp_root], what=f"dpkg -x {deb.name}")
        (tmp_root / ".complete").touch()
        tmp_root.chmod(0o755)
        tmp_root.rename(root)

    say("building the API server (minutes when cold; seconds with a warm Go cache)")
    started = time.monotonic()
    tmp_build = Path(tempfile.mkdtemp(prefix=f".{build_dir.name}-tmp", dir=mkdir_p(cache.builds)))
    bin_dir = mkdir_p(tmp_build / "bin")
    pkg_dir = cache.gopath / "src" / GO_IMPORT_PATH
    shutil.rmtree(pkg_dir, ignore_errors=True)  # no file of another wrapper version stays
    mkdir_p(pkg_dir)
    for name, data in files.items():
        (pkg_dir / name).write_bytes(data)
    goroot = root / f"usr/lib/go-{GO_MINOR}"
    env = {k: v for k, v in os.environ.items() if not k.startswith("GO")}
    env.update(
        GO111MODULE="off",
        GOPATH=f"{cache.gopath}:{root / 'usr/share/gocode'}",
        GOROOT=str(goroot),
        GOTOOLCHAIN="local",
        CGO_ENABLED="0",
        GOCACHE=str(mkdir_p(cache.gocache)),
        GOFLAGS="",
        GOENV="off",
        GOPROXY="off",
        GOTELEMETRY="off",
    )
    run_command(
        [goroot / "bin/go", "build", "-o", bin_dir / "controlplane", GO_IMPORT_PATH],
        what="building the API server wrapper",
        env=env,
        log_file=cache.logs / f"build-{key[:16]}.log",
    )
    for name, rel in (("etcd", "usr/bin/etcd"), ("kubectl", "usr/bin/kubectl")):
        if not (root / rel).is_file():
            raise ControlPlaneError(f"the extracted packages have no {rel}")
        _link_or_copy(root / rel, bin_dir / name)
    write_json_atomic(
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
    write_json_atomic(cache.pointer(wrapper_hash), {"build": build_dir.name})
    cache.prune(root, debs, say)
    tc = Toolchain.from_build_dir(build_dir)
    if tc is None:
        raise ControlPlaneError(f"the build in {build_dir} is incomplete")
    say(f"built in {time.monotonic() - started:.0f} s: {build_dir}")
    return tc


def mkdir_p(path: Path) -> Path:
    """``mkdir -p``, returning the path."""
    path.mkdir(parents=True, exist_ok=True)
    return path
