"""A lean asyncio client for the benchmark: aiohttp straight onto the API server.

The benchmark must load the machine as little as it can (it shares the cores with the
API server, etcd, the operator and the simulator), so it talks JSON over aiohttp with
no model layer. Credentials come from a kubeconfig, resolved by kubernetes_asyncio's
loader (files, inline data, tokens, exec plugins).
"""

from __future__ import annotations

import json
import ssl
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import aiohttp
from kubernetes_asyncio import client as k8s_client
from kubernetes_asyncio import config as k8s_config

MERGE_PATCH = "application/merge-patch+json"
JSON = "application/json"


class ApiError(Exception):
    """A request the API server answered with an error status."""

    def __init__(self, status: int, method: str, path: str, body: str) -> None:
        super().__init__(f"{method} {path}: HTTP {status}: {body[:300]}")
        self.status = status


class WatchExpired(Exception):
    """The watch's resourceVersion is too old (HTTP 410 / ERROR event): list again."""


@dataclass(frozen=True)
class Credentials:
    host: str
    ssl_context: ssl.SSLContext | bool
    headers: Mapping[str, str]


async def load_credentials(kubeconfig: Path | str) -> Credentials:
    """The server and how to authenticate to it, from a kubeconfig."""
    configuration = k8s_client.Configuration()
    await k8s_config.load_kube_config(
        config_file=str(kubeconfig), client_configuration=configuration
    )
    context: ssl.SSLContext | bool
    if configuration.verify_ssl:
        context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
    else:
        context = False
    if configuration.cert_file:
        if context is False:
            context = ssl.create_default_context()
            context.check_hostname = False
            context.verify_mode = ssl.CERT_NONE
        assert isinstance(context, ssl.SSLContext)
        context.load_cert_chain(configuration.cert_file, configuration.key_file)
    headers: dict[str, str] = {}
    auth = await configuration.auth_settings()
    token = auth.get("BearerToken")
    if token:
        headers["Authorization"] = str(token["value"])
    return Credentials(str(configuration.host).rstrip("/"), context, headers)


class Api:
    """JSON requests and watches against one API server, over a bounded connection pool."""

    def __init__(self, credentials: Credentials, connections: int = 32) -> None:
        self.credentials = credentials
        self.connections = connections
        connector = aiohttp.TCPConnector(
            limit=connections, ssl=credentials.ssl_context, keepalive_timeout=60
        )
        self.session = aiohttp.ClientSession(
            connector=connector,
            headers={"Accept": JSON, **credentials.headers},
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10),
            json_serialize=json.dumps,
        )

    @classmethod
    async def connect(cls, kubeconfig: Path | str, connections: int = 32) -> Api:
        return cls(await load_credentials(kubeconfig), connections)

    async def __aenter__(self) -> Self:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.close()

    async def close(self) -> None:
        await self.session.close()

    def url(self, path: str) -> str:
        return self.credentials.host + path

    async def request(
        self,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = JSON,
        params: Mapping[str, str] | None = None,
        request_timeout: float = 60.0,
    ) -> Any:
        """The decoded JSON answer; ApiError on an error status."""
        data = None if body is None else json.dumps(body)
        headers = {"Content-Type": content_type} if data is not None else None
        async with self.session.request(
            method,
            self.url(path),
            data=data,
            headers=headers,
            params=params,
            timeout=aiohttp.ClientTimeout(total=request_timeout),
        ) as response:
            text = await response.text()
            if response.status >= 400:
                raise ApiError(response.status, method, path, text)
            return json.loads(text) if text else None

    async def text(self, path: str, request_timeout: float = 30.0) -> str:
        async with self.session.get(
            self.url(path), timeout=aiohttp.ClientTimeout(total=request_timeout)
        ) as response:
            text = await response.text()
            if response.status >= 400:
                raise ApiError(response.status, "GET", path, text)
            return text

    async def watch(
        self, path: str, resource_version: str, timeout_seconds: int = 1800
    ) -> AsyncIterator[dict[str, Any]]:
        """Watch events (decoded) from `resource_version` on; WatchExpired when too old."""
        params = {
            "watch": "1",
            "resourceVersion": resource_version,
            "allowWatchBookmarks": "true",
            "timeoutSeconds": str(timeout_seconds),
        }
        async with self.session.get(
            self.url(path),
            params=params,
            timeout=aiohttp.ClientTimeout(total=timeout_seconds + 60, sock_connect=10),
        ) as response:
            if response.status == 410:
                raise WatchExpired(path)
            if response.status >= 400:
                raise ApiError(response.status, "WATCH", path, await response.text())
            buffer = b""
            async for chunk in response.content.iter_any():
                buffer += chunk
                while (end := buffer.find(b"\n")) >= 0:
                    line, buffer = buffer[:end], buffer[end + 1 :]
                    if not line.strip():
                        continue
                    event: dict[str, Any] = json.loads(line)
                    if event.get("type") == "ERROR":
                        code = (event.get("object") or {}).get("code")
                        if code == 410:
                            raise WatchExpired(path)
                        raise ApiError(int(code or 500), "WATCH", path, json.dumps(event))
                    yield event
