"""The API client's set-up: proxies resolved once, no per-request environment lookups."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from job_operator.kube import environment_proxy, new_api_client


def test_no_proxy_when_the_environment_names_none(monkeypatch: pytest.MonkeyPatch) -> None:
    for name in ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy", "ALL_PROXY"):
        monkeypatch.delenv(name, raising=False)
    assert environment_proxy("https://10.0.0.1:6443") is None


def test_https_proxy_is_used_unless_no_proxy_exempts_the_host(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    monkeypatch.setenv("https_proxy", "http://proxy.internal:3128")
    monkeypatch.setenv("no_proxy", "localhost,.svc")
    assert environment_proxy("https://api.example:6443") == "http://proxy.internal:3128"
    assert environment_proxy("https://kubernetes.default.svc") is None
    assert environment_proxy("https://localhost:6443") is None


def kubeconfig(path: Path, proxy: str | None = None) -> Path:
    cluster: dict[str, object] = {
        "server": "https://127.0.0.1:6443",
        "insecure-skip-tls-verify": True,
    }
    if proxy:
        cluster["proxy-url"] = proxy
    path.write_text(
        yaml.safe_dump(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "u", "user": {"token": "t"}}],
                "contexts": [{"name": "x", "context": {"cluster": "c", "user": "u"}}],
                "current-context": "x",
            }
        )
    )
    return path


async def test_the_session_does_not_read_the_environment_per_request(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("https_proxy", "http://proxy.internal:3128")
    monkeypatch.delenv("no_proxy", raising=False)
    monkeypatch.delenv("NO_PROXY", raising=False)
    api = await new_api_client(str(kubeconfig(tmp_path / "config")))
    try:
        assert api.rest_client.pool_manager.trust_env is False
        assert api.configuration.proxy == "http://proxy.internal:3128"
    finally:
        await api.close()


async def test_a_kubeconfig_proxy_wins_over_the_environment(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("https_proxy", "http://proxy.internal:3128")
    api = await new_api_client(str(kubeconfig(tmp_path / "config", "http://other:8080")))
    try:
        assert api.configuration.proxy == "http://other:8080"
    finally:
        await api.close()
