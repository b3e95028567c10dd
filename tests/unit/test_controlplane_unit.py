"""The pure parts of testenv: apt sources, closure, cache keys, certificate subjects, tokens."""

from __future__ import annotations

import os
import time
from pathlib import Path

import pytest
import yaml

from testenv import build as cp
from testenv import controlplane
from tests.helpers import wait_for
from tests.identities import Endpoint, split_service_account, token_kubeconfig

DEB822 = """\
Types: deb
# http://snapshot.example/archive/debian/20250520T000000Z
URIs: http://mirror.example/debian
Suites: bookworm bookworm-updates
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg

Types: deb
# http://snapshot.example/archive/debian-security/20250520T000000Z
URIs: http://mirror.example/debian-security
Suites: bookworm-security
Components: main
Signed-By: /usr/share/keyrings/debian-archive-keyring.gpg
"""

ONE_LINE = """\
# deb http://commented.example/debian sid main
deb-src http://src.example/debian bookworm main
deb [arch=amd64 signed-by=/usr/share/keyrings/x.gpg] http://one.example/debian bookworm main
deb http://one.example/debian-security bookworm-security main # trailing comment
"""


def test_deb822_keeps_enabled_deb_uris_in_order() -> None:
    text = (
        DEB822
        + "\nTypes: deb-src\nURIs: http://src.example/debian\nSuites: sid\n"
        + "\nTypes: deb\nEnabled: no\nURIs: http://off.example/debian\nSuites: sid\n"
        + "\ntypes: deb deb-src\nuris: http://a.example/debian\n  http://b.example/debian\n"
        + "suites: trixie\n"
    )
    assert cp.parse_deb822_sources(text) == [
        cp.AptSource("http://mirror.example/debian", ("bookworm", "bookworm-updates")),
        cp.AptSource("http://mirror.example/debian-security", ("bookworm-security",)),
        cp.AptSource("http://a.example/debian", ("trixie",)),
        cp.AptSource("http://b.example/debian", ("trixie",)),
    ]


def test_one_line_format_skips_comments_sources_and_options() -> None:
    assert cp.parse_one_line_sources(ONE_LINE) == [
        cp.AptSource("http://one.example/debian", ("bookworm",)),
        cp.AptSource("http://one.example/debian-security", ("bookworm-security",)),
    ]


def make_etc_apt(tmp_path: Path, files: dict[str, str]) -> Path:
    etc = tmp_path / "apt"
    (etc / "sources.list.d").mkdir(parents=True)
    for name, text in files.items():
        (etc / name).write_text(text)
    return etc


@pytest.fixture(autouse=True)
def _no_mirror_override(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("JOB_OPERATOR_DEBIAN_MIRROR", raising=False)


def test_mirror_from_deb822_skips_security(tmp_path: Path) -> None:
    security_first = "\n\n".join(reversed(DEB822.split("\n\n")))
    etc = make_etc_apt(tmp_path, {"sources.list.d/debian.sources": security_first})
    assert cp.find_debian_mirror(etc) == "http://mirror.example/debian"


def test_mirror_from_one_line_sources_list(tmp_path: Path) -> None:
    etc = make_etc_apt(tmp_path, {"sources.list": ONE_LINE})
    assert cp.find_debian_mirror(etc) == "http://one.example/debian"


def test_mirror_skips_non_debian_archives(tmp_path: Path) -> None:
    etc = make_etc_apt(
        tmp_path,
        {
            "sources.list": "deb https://packages.example/apt cloud-sdk main\n",
            "sources.list.d/debian.sources": DEB822,
            "sources.list.d/other.list.disabled": "deb http://disabled.example/debian sid main\n",
        },
    )
    assert cp.find_debian_mirror(etc) == "http://mirror.example/debian"


def test_mirror_by_suite_when_path_is_not_debian(tmp_path: Path) -> None:
    etc = make_etc_apt(tmp_path, {"sources.list": "deb http://m.example/pub/deb/ trixie main\n"})
    assert cp.find_debian_mirror(etc) == "http://m.example/pub/deb"


def test_mirror_missing_is_a_clear_error(tmp_path: Path) -> None:
    security_only = DEB822.split("\n\n")[1]
    etc = make_etc_apt(tmp_path, {"sources.list.d/debian.sources": security_only})
    with pytest.raises(cp.ControlPlaneError, match="no Debian archive mirror"):
        cp.find_debian_mirror(etc)


def test_mirror_override(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("JOB_OPERATOR_DEBIAN_MIRROR", "http://override.example/debian/")
    assert cp.find_debian_mirror(make_etc_apt(tmp_path, {})) == "http://override.example/debian"


def test_closure_keeps_go_etcd_and_kubectl_only() -> None:
    output = """\
golang-1.27-go
  Depends: golang-1.27-src
  Depends: libc6
etcd-server
  Depends: adduser
kubectl
libc6
<golang-virtual>
adduser
golang-1.27-src
golang-1.27-go
"""
    assert cp.select_closure(output.splitlines()) == [
        "etcd-server",
        "golang-1.27-go",
        "golang-1.27-src",
        "kubectl",
    ]


def test_policy_candidates() -> None:
    output = """\
kubectl:
  Installed: (none)
  Candidate: 1.36.4+ds-1
  Version table:
     1.36.4+ds-1 500
        500 http://mirror.example/debian sid/main amd64 Packages
golang-any:
  Installed: (none)
  Candidate: 2:1.27~1
"""
    assert cp.parse_policy(output) == {"kubectl": "1.36.4+ds-1", "golang-any": "2:1.27~1"}


PACKAGES = {"kubectl": "1.36.4+ds-1", "etcd-server": "3.5.30-2", "golang-any": "2:1.27~1"}


def test_cache_key_is_stable() -> None:
    reordered = dict(reversed(list(PACKAGES.items())))
    key = cp.cache_key(PACKAGES, b"package main\n")
    assert key == cp.cache_key(reordered, b"package main\n")
    assert len(key) == 64
    # A golden value: a change here invalidates every cached build (bump BUILD_RECIPE then).
    assert key == "063d666dedc584c32d8a9fe645f5f0abf234e9aa866be5c290591627d30195d2"


def test_cache_key_follows_versions_and_wrapper() -> None:
    key = cp.cache_key(PACKAGES, b"package main\n")
    assert cp.cache_key({**PACKAGES, "kubectl": "1.36.5+ds-1"}, b"package main\n") != key
    assert cp.cache_key({**PACKAGES, "golang-x-dev": "1"}, b"package main\n") != key
    assert cp.cache_key(PACKAGES, b"package main // changed\n") != key
    assert cp.packages_key(PACKAGES) == cp.packages_key(dict(sorted(PACKAGES.items())))
    assert cp.wrapper_key(b"a") != cp.wrapper_key(b"b")


def test_deb_file_names(tmp_path: Path) -> None:
    (tmp_path / "golang-any_2%3a1.27~1_amd64.deb").touch()
    assert cp._find_deb(tmp_path, "golang-any", "2:1.27~1") == (
        tmp_path / "golang-any_2%3a1.27~1_amd64.deb"
    )
    assert cp._find_deb(tmp_path, "golang-any", "2:1.28~1") is None


def test_certificate_subject_escapes() -> None:
    assert controlplane._subject("admin", ["system:masters"]) == "/O=system:masters/CN=admin"
    assert controlplane._subject("a/b", ["x=y", "g"]) == "/O=x\\=y/O=g/CN=a\\/b"


def test_error_carries_output_tail() -> None:
    err = cp.ControlPlaneError("building failed", "line 1\nline 2")
    assert err.message == "building failed"
    assert str(err) == "building failed\nline 1\nline 2"
    assert cp.tail("\n".join(str(i) for i in range(100)), 3) == "97\n98\n99"


def test_wait_for_returns_value_or_names_what_timed_out() -> None:
    calls = iter([0, None, 7])
    assert wait_for(lambda: next(calls), timeout=5, interval=0) == 7
    with pytest.raises(AssertionError, match="the impossible"):
        wait_for(lambda: False, timeout=0.05, interval=0.01, description="the impossible")


def test_token_file_lines_are_csv_with_groups_in_one_field() -> None:
    assert controlplane.token_file_line("t0k", "alice", "u-1", []) == "t0k,alice,u-1\n"
    assert (
        controlplane.token_file_line("t0k", "bob", "u-2", ["dev", "system:masters"])
        == 't0k,bob,u-2,"dev,system:masters"\n'
    )
    assert controlplane.token_file_line("t", 'a "b", c', "u", []) == 't,"a ""b"", c",u\n'


def test_service_accounts_get_the_groups_a_cluster_gives_them() -> None:
    assert controlplane.service_account_groups("system:serviceaccount:ns:op") == (
        "system:serviceaccounts",
        "system:serviceaccounts:ns",
    )
    for other in ("alice", "system:serviceaccount:ns", "system:serviceaccount::op"):
        assert controlplane.service_account_groups(other) == ()
    assert split_service_account("system:serviceaccount:ns:op") == ("ns", "op")
    assert split_service_account("system:admin") is None


def test_wrapper_source_covers_every_go_file(tmp_path: Path) -> None:
    (tmp_path / "main.go").write_text("package main\n")
    (tmp_path / "authn.go").write_text("package main // a\n")
    (tmp_path / "authn_test.go").write_text("package main // test\n")
    (tmp_path / "README.md").write_text("not built\n")
    files = cp.wrapper_files(tmp_path)
    assert sorted(files) == ["authn.go", "main.go"]
    source = cp.wrapper_source(files)
    (tmp_path / "authn.go").write_text("package main // b\n")
    assert cp.wrapper_source(cp.wrapper_files(tmp_path)) != source
    (tmp_path / "README.md").write_text("changed, still not built\n")
    (tmp_path / "authn.go").write_text("package main // a\n")
    assert cp.wrapper_source(cp.wrapper_files(tmp_path)) == source


def test_a_token_kubeconfig_carries_the_token_and_no_certificate(tmp_path: Path) -> None:
    where = Endpoint("https://127.0.0.1:6443", tmp_path / "ca.crt")
    path = token_kubeconfig(tmp_path / "kubeconfig", where, "system:serviceaccount:ns:op", "t0k")
    config = yaml.safe_load(path.read_text())
    assert config["users"] == [{"name": "system:serviceaccount:ns:op", "user": {"token": "t0k"}}]
    assert config["clusters"][0]["cluster"] == {
        "server": "https://127.0.0.1:6443",
        "certificate-authority": str(tmp_path / "ca.crt"),
    }
    assert path.stat().st_mode & 0o077 == 0


def test_pruning_keeps_builds_in_use_whatever_their_number(tmp_path: Path) -> None:
    cache = cp._Cache(tmp_path)
    for folder in (cache.roots / "current", cache.debs, cache.latest):
        folder.mkdir(parents=True)
    day = 24 * 3600
    # More builds used within the day than KEEP_BUILDS: all of them stay.
    ages = {"new": 0, "used-1h-ago": 3600, "used-2h-ago": 7200, "used-3h-ago": 10800,
            "old-1": 2 * day, "old-2": 3 * day}  # fmt: skip
    assert cp.KEEP_BUILDS < 4
    now = time.time()
    for name, age in ages.items():
        build = cache.builds / name
        build.mkdir(parents=True)
        os.utime(build, (now - 5 * day, now - 5 * day))
        cp.mark_used(build)
        os.utime(build / cp.USED_MARKER, (now - age, now - age))
    cache.prune(cache.roots / "current", [], lambda _: None)
    kept = sorted(b.name for b in cache.builds.iterdir())
    assert kept == ["new", "used-1h-ago", "used-2h-ago", "used-3h-ago"]
