"""The test cluster is a real API server: what kopf and the operator rely on behaves as on one.

Every test here also passes against kind or a real cluster
(``JOB_OPERATOR_TEST_KUBECONFIG=1``), except the two marked as about the started control
plane itself (restarts, audit log and extra identities), which skip there.
"""

from __future__ import annotations

import asyncio
import datetime
import json
import secrets
from collections.abc import AsyncIterator, Iterator
from typing import Any

import kubernetes_asyncio
import pytest

from tests.helpers import Kube, wait_for

# The generated client is untyped; reach it through Any to keep mypy --strict meaningful here.
K8S: Any = kubernetes_asyncio

GROUP = "test.job-operator.dev"
VERSION = "v1"
PLURAL = "widgets"
KIND = "Widget"
CRD_NAME = f"{PLURAL}.{GROUP}"

WIDGET_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": CRD_NAME},
    "spec": {
        "group": GROUP,
        "scope": "Namespaced",
        "names": {"plural": PLURAL, "singular": "widget", "kind": KIND, "listKind": "WidgetList"},
        "versions": [
            {
                "name": VERSION,
                "served": True,
                "storage": True,
                "subresources": {"status": {}},
                "schema": {
                    "openAPIV3Schema": {
                        "type": "object",
                        "properties": {
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "size": {"type": "integer", "minimum": 0},
                                    "color": {"type": "string"},
                                },
                            },
                            "status": {
                                "type": "object",
                                "properties": {
                                    "phase": {"type": "string"},
                                    "observed": {"type": "integer"},
                                },
                            },
                        },
                    }
                },
            }
        ],
    },
}


def widget(name: str, namespace: str, **spec: Any) -> dict[str, Any]:
    return {
        "apiVersion": f"{GROUP}/{VERSION}",
        "kind": KIND,
        "metadata": {"name": name, "namespace": namespace},
        "spec": spec,
    }


def unique(prefix: str) -> str:
    return f"{prefix}-{secrets.token_hex(3)}"


def crd_established(kube: Kube) -> bool:
    proc = kube.kubectl_run("get", "crd", CRD_NAME, "-o", "json", check=False)
    if proc.returncode != 0:
        return False
    conditions = json.loads(proc.stdout).get("status", {}).get("conditions", [])
    return any(c["type"] == "Established" and c["status"] == "True" for c in conditions)


@pytest.fixture(scope="module")
def widget_crd(kube: Kube) -> Iterator[str]:
    """The Widget CRD, applied and Established, deleted after the module."""
    kube.kubectl_run("apply", "-f", "-", input=json.dumps(WIDGET_CRD))
    wait_for(lambda: crd_established(kube), timeout=60, description=f"CRD {CRD_NAME} Established")
    yield CRD_NAME
    kube.kubectl_run("delete", "crd", CRD_NAME, "--ignore-not-found", "--wait=false")


@pytest.fixture
async def api(kube: Kube) -> AsyncIterator[Any]:
    """A kubernetes_asyncio ApiClient for the cluster."""
    client = await K8S.config.new_client_from_config(config_file=str(kube.kubeconfig))
    try:
        yield client
    finally:
        await client.close()


def test_crd_becomes_established_and_is_discovered(kube: Kube, widget_crd: str) -> None:
    groups = json.loads(kube.kubectl_run("get", "--raw", "/apis").stdout)["groups"]
    ours = [g for g in groups if g["name"] == GROUP]
    assert ours, f"{GROUP} missing from /apis: {[g['name'] for g in groups]}"
    assert ours[0]["preferredVersion"]["version"] == VERSION

    resources = kube.kubectl_run("api-resources", f"--api-group={GROUP}", "-o", "name")
    assert widget_crd in resources.stdout.split()


def test_unknown_fields_are_refused_and_pruned(kube: Kube, widget_crd: str, namespace: str) -> None:
    bad = widget("bad", namespace, size=1, bogusField="x")

    refused = kube.kubectl_run("apply", "-f", "-", input=json.dumps(bad), check=False)
    assert refused.returncode != 0
    assert "bogusField" in refused.stderr

    # Without validation the server prunes what the structural schema does not know.
    kube.kubectl_run("apply", "--validate=false", "-f", "-", input=json.dumps(bad))
    stored = json.loads(
        kube.kubectl_run("get", PLURAL, "bad", "-n", namespace, "-o", "json").stdout
    )
    assert stored["spec"] == {"size": 1}


async def test_status_subresource_and_stale_resource_version_conflict(
    api: Any, widget_crd: str, namespace: str
) -> None:
    custom = K8S.client.CustomObjectsApi(api)
    name = unique("w")
    created = await custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, widget(name, namespace, size=1)
    )
    stale = created["metadata"]["resourceVersion"]

    # Status written through the main resource is ignored: it has a status subresource.
    await custom.patch_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, name, {"status": {"phase": "Ignored"}},
        _content_type="application/merge-patch+json",
    )  # fmt: skip
    current = await custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    assert "status" not in current or current["status"].get("phase") != "Ignored"

    patched = await custom.patch_namespaced_custom_object_status(
        GROUP, VERSION, namespace, PLURAL, name,
        {"metadata": {"resourceVersion": current["metadata"]["resourceVersion"]},
         "status": {"phase": "Running", "observed": 1}},
        _content_type="application/merge-patch+json",
    )  # fmt: skip
    assert patched["status"] == {"phase": "Running", "observed": 1}
    assert patched["metadata"]["resourceVersion"] != stale

    with pytest.raises(K8S.client.ApiException) as conflict:
        await custom.patch_namespaced_custom_object_status(
            GROUP, VERSION, namespace, PLURAL, name,
            {"metadata": {"resourceVersion": stale}, "status": {"phase": "Stale"}},
            _content_type="application/merge-patch+json",
        )  # fmt: skip
    assert conflict.value.status == 409

    final = await custom.get_namespaced_custom_object(GROUP, VERSION, namespace, PLURAL, name)
    assert final["status"]["phase"] == "Running"


async def test_watch_sees_kubectl_annotate(
    kube: Kube, api: Any, widget_crd: str, namespace: str
) -> None:
    custom = K8S.client.CustomObjectsApi(api)
    name = unique("w")
    created = await custom.create_namespaced_custom_object(
        GROUP, VERSION, namespace, PLURAL, widget(name, namespace, size=2)
    )
    key, value = f"{GROUP}/poke", unique("v")

    async def annotated() -> str:
        # Watching from the creation's resourceVersion: nothing after it can be missed,
        # whether the watch starts before or after the annotation.
        async with K8S.watch.Watch() as w:
            async for event in w.stream(
                custom.list_namespaced_custom_object, GROUP, VERSION, namespace, PLURAL,
                resource_version=created["metadata"]["resourceVersion"],
                timeout_seconds=60,
            ):  # fmt: skip
                obj = event["object"]
                annotations = obj["metadata"].get("annotations") or {}
                if obj["metadata"]["name"] == name and annotations.get(key) == value:
                    return str(event["type"])
        raise AssertionError("the watch ended without seeing the annotation")

    async with asyncio.timeout(60):
        seen = asyncio.create_task(annotated())
        await asyncio.to_thread(
            kube.kubectl_run, "annotate", PLURAL, name, "-n", namespace, f"{key}={value}"
        )
        assert await seen == "MODIFIED"


async def test_events_are_listed_back_by_involved_object(
    api: Any, widget_crd: str, namespace: str
) -> None:
    core = K8S.client.CoreV1Api(api)
    now = datetime.datetime.now(datetime.UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
    subjects = {"alpha": 2, "beta": 1}
    for subject, count in subjects.items():
        for i in range(count):
            await core.create_namespaced_event(
                namespace,
                {
                    "metadata": {"name": f"{subject}.{i}-{secrets.token_hex(4)}"},
                    "involvedObject": {
                        "apiVersion": f"{GROUP}/{VERSION}",
                        "kind": KIND,
                        "name": subject,
                        "namespace": namespace,
                    },
                    "reason": "Tested",
                    "message": f"event {i} about {subject}",
                    "type": "Normal",
                    "source": {"component": "job-operator-tests"},
                    "firstTimestamp": now,
                    "lastTimestamp": now,
                    "count": 1,
                },
            )

    for subject, count in subjects.items():
        listed = await core.list_namespaced_event(
            namespace, field_selector=f"involvedObject.name={subject}"
        )
        assert len(listed.items) == count
        assert {e.involved_object.name for e in listed.items} == {subject}
        assert all(e.reason == "Tested" for e in listed.items)


def test_namespaces_are_created_listed_and_deleted(kube: Kube, namespace: str) -> None:
    got = json.loads(kube.kubectl_run("get", "namespace", namespace, "-o", "json").stdout)
    assert got["metadata"]["name"] == namespace

    extra = unique("t-extra")
    kube.kubectl_run("create", "namespace", extra)
    try:
        listed = kube.kubectl_run("get", "namespaces", "-o", "name").stdout.split()
        assert f"namespace/{extra}" in listed
        assert f"namespace/{namespace}" in listed
    finally:
        kube.kubectl_run("delete", "namespace", extra, "--wait=false")

    def gone() -> bool:
        proc = kube.kubectl_run("get", "namespace", extra, "--ignore-not-found", "-o", "name")
        return proc.stdout.strip() == ""

    wait_for(gone, timeout=120, interval=0.5, description=f"namespace {extra} deleted")


def test_restarts_keep_objects_and_namespaces(kube: Kube, widget_crd: str, namespace: str) -> None:
    """About the started control plane: etcd and server restarts lose nothing."""
    cp = kube.control_plane
    if cp is None:
        pytest.skip("only for the control plane the suite starts")
    kube.kubectl_run("apply", "-f", "-", input=json.dumps(widget("kept", namespace, size=3)))
    kube.kubectl_run("label", "namespace", namespace, "job-operator.dev/test=restarts")
    old_url = cp.server_url

    cp.restart_etcd(kill=True)  # a crash; a graceful stop waits ~7 s for the server's watches
    cp.restart_apiserver()

    assert cp.server_url == old_url
    stored = json.loads(
        kube.kubectl_run("get", PLURAL, "kept", "-n", namespace, "-o", "json").stdout
    )
    assert stored["spec"] == {"size": 3}
    ns = json.loads(kube.kubectl_run("get", "namespace", namespace, "-o", "json").stdout)
    assert ns["metadata"]["labels"]["job-operator.dev/test"] == "restarts"


def test_audit_log_records_each_identity(kube: Kube, widget_crd: str, namespace: str) -> None:
    """About the started control plane: the audit log, and kubeconfigs for other users."""
    cp = kube.control_plane
    if cp is None or cp.audit_log is None:
        pytest.skip("only for the control plane the suite starts (with its audit log)")
    audit_log = cp.audit_log
    # Longer than X.509's usual 64-character limit on CN, like many service accounts.
    user = f"system:serviceaccount:{namespace}:job-operator-with-a-long-service-account-name"
    group = f"system:serviceaccounts:{namespace}"
    assert len(user) > 64
    other = Kube(
        kubeconfig=cp.make_kubeconfig(user, ["system:masters", group]),
        kubectl=kube.kubectl,
        kubectl_cache_dir=kube.kubectl_cache_dir,
    )
    other.kubectl_run("get", PLURAL, "-n", namespace)

    def listed_widgets_as_user() -> bool:
        for line in audit_log.read_text().splitlines():
            entry = json.loads(line)
            ref = entry.get("objectRef") or {}
            if (
                entry["user"].get("username") == user
                and group in entry["user"].get("groups", [])
                and ref.get("resource") == PLURAL
                and ref.get("namespace") == namespace
                and entry["verb"] == "list"
            ):
                return True
        return False

    wait_for(listed_widgets_as_user, timeout=30, description=f"{user}'s list in the audit log")
