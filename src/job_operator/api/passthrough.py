"""The caller's door to the Kubernetes API: requests made with the caller's bearer token.

The session carries no credentials of its own — no client certificate, no token of
the server's — only the cluster's address and CA. So every call here is authenticated
and authorised by the API server as the caller, and a caller without a valid token
can never borrow the server's identity. Tokens are never logged or kept.
"""

from __future__ import annotations

import json
import ssl
from typing import Any, Final

import aiohttp
from kubernetes_asyncio import client
from kubernetes_asyncio.client.exceptions import ApiException

from job_operator import names
from job_operator.kube import load_configuration, retry_transient

JSON_PATCH: Final = "application/json-patch+json"
# Calls on the caller's behalf give up quickly: the caller is waiting, and may retry.
PATIENCE_SECONDS: Final = 10.0


def status_error(status: int, body: bytes) -> ApiException:
    """An ApiException carrying the API server's own message (its Status), which names
    the user, verb and resource of a refusal."""
    try:
        message = str(json.loads(body).get("message") or "")
    except (ValueError, AttributeError):
        message = ""
    return ApiException(status=status, reason=message or f"HTTP {status}")


def job_path(namespace: str, name: str = "") -> str:
    path = f"/apis/{names.GROUP}/{names.VERSION}/namespaces/{namespace}/{names.JOB_PLURAL}"
    return f"{path}/{name}" if name else path


class CallerClient:
    """Kubernetes calls made as the caller: `token` is theirs, per call."""

    def __init__(self, host: str, ssl_context: ssl.SSLContext, proxy: str | None) -> None:
        self.host = host.rstrip("/")
        self.proxy = proxy
        self.session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(ssl=ssl_context, limit=64),
            trust_env=False,
        )

    @classmethod
    async def connect(cls, kubeconfig: str | None = None) -> CallerClient:
        """The cluster's address and CA from the same place the server's own client gets
        them (kubeconfig or in-cluster), and nothing else of that identity."""
        configuration = await load_configuration(kubeconfig)
        return cls(configuration.host or "", ssl_context_of(configuration), configuration.proxy)

    async def close(self) -> None:
        await self.session.close()

    async def call(
        self,
        token: str,
        method: str,
        path: str,
        body: Any = None,
        *,
        content_type: str = "application/json",
        params: dict[str, str] | None = None,
    ) -> dict[str, Any]:
        """One request as the caller; ApiException (or NotFound, Conflict) when refused,
        retried through transient failures for a few seconds."""
        headers = {"Authorization": f"Bearer {token}", "Accept": "application/json"}
        data = None
        if body is not None:
            headers["Content-Type"] = content_type
            data = json.dumps(body).encode()

        async def once() -> dict[str, Any]:
            async with self.session.request(
                method,
                self.host + path,
                data=data,
                headers=headers,
                params=params,
                proxy=self.proxy,
            ) as response:
                raw = await response.read()
                if response.status >= 400:
                    raise status_error(response.status, raw)
                result: dict[str, Any] = json.loads(raw)
                return result

        return await retry_transient(once, patience=PATIENCE_SECONDS)

    async def whoami(self, token: str) -> str:
        """The caller's user name (a SelfSubjectReview); ApiException 401 for a bad token."""
        review = await self.call(
            token,
            "POST",
            "/apis/authentication.k8s.io/v1/selfsubjectreviews",
            {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"},
        )
        user = (review.get("status") or {}).get("userInfo") or {}
        return str(user.get("username") or "")

    async def get_job(self, token: str, namespace: str, name: str) -> dict[str, Any]:
        return await self.call(token, "GET", job_path(namespace, name))

    async def patch_job(
        self,
        token: str,
        namespace: str,
        name: str,
        operations: list[dict[str, Any]],
        field_manager: str,
    ) -> dict[str, Any]:
        """A JSON patch of the job (its `test` operations make it conditional)."""
        return await self.call(
            token,
            "PATCH",
            job_path(namespace, name),
            operations,
            content_type=JSON_PATCH,
            params={"fieldManager": field_manager},
        )


def ssl_context_of(configuration: client.Configuration) -> ssl.SSLContext:
    """Trust the cluster's CA; deliberately never load a client certificate."""
    context = ssl.create_default_context(cafile=configuration.ssl_ca_cert)
    if not configuration.verify_ssl:
        context.check_hostname = False
        context.verify_mode = ssl.CERT_NONE
    return context
