"""Who may: the API server authenticates every request and authorises it as a cluster does.

Against the live server: no credentials and a wrong token get 401; a minted user is known
by its token alone and may do only what it is granted. The tests about the suite's own
control plane (its token file, its audit log, its start-up) skip on an external cluster.
"""

from __future__ import annotations

import json
import secrets
import ssl
import urllib.error
import urllib.request
from pathlib import Path
from typing import Any

import pytest

from job_operator.names import GROUP, JOB_PLURAL, VERSION
from testenv.build import ControlPlaneError
from testenv.controlplane import ControlPlane
from tests.helpers import Kube, wait_for
from tests.identities import IdentityMinter, endpoint, kube_as

JOBS_PATH = f"/apis/{GROUP}/{VERSION}/{JOB_PLURAL}"


def raw_request(url: str, context: ssl.SSLContext, token: str | None) -> tuple[int, Any]:
    """GET ``url`` with only ``token`` (if any) as credentials: the status and the body."""
    request = urllib.request.Request(url)
    if token is not None:
        request.add_header("Authorization", f"Bearer {token}")
    try:
        with urllib.request.urlopen(request, timeout=30, context=context) as response:
            return int(response.status), json.loads(response.read() or b"null")
    except urllib.error.HTTPError as e:
        return int(e.code), json.loads(e.read() or b"null")


def control_plane(kube: Kube) -> ControlPlane:
    if kube.control_plane is None:
        pytest.skip("about the suite's own control plane")
    return kube.control_plane


def test_no_token_and_a_wrong_token_are_401(kube: Kube, crds: None, tmp_path: Path) -> None:
    where = endpoint(kube, tmp_path)
    context = where.ssl_context()

    status, body = raw_request(where.server + JOBS_PATH, context, None)
    if kube.control_plane is None and status == 403:
        # A cluster with anonymous access on: known as system:anonymous, which may not.
        assert "system:anonymous" in body["message"]
    else:
        assert (status, body["reason"]) == (401, "Unauthorized"), body

    status, body = raw_request(where.server + JOBS_PATH, context, f"wrong-{secrets.token_hex(16)}")
    assert (status, body["reason"]) == (401, "Unauthorized"), body


def test_a_user_is_known_by_its_token_and_may_do_nothing_ungranted(
    kube: Kube, crds: None, namespace: str, mint_identity: IdentityMinter, tmp_path: Path
) -> None:
    user = mint_identity(f"system:serviceaccount:{namespace}:nobody")
    kubeconfig = user.kubeconfig.read_text()
    assert user.token in kubeconfig
    assert "client-certificate" not in kubeconfig
    where = endpoint(kube, tmp_path)

    status, body = raw_request(
        f"{where.server}/apis/{GROUP}/{VERSION}/namespaces/{namespace}/{JOB_PLURAL}",
        where.ssl_context(),
        user.token,
    )

    assert (status, body["reason"]) == (403, "Forbidden"), body
    assert (
        f'User "{user.name}" cannot list resource "{JOB_PLURAL}" in API group "{GROUP}" '
        f'in the namespace "{namespace}"'
    ) in body["message"]


def test_an_administrator_by_token(
    kube: Kube, crds: None, namespace: str, mint_identity: IdentityMinter
) -> None:
    admin = mint_identity("carol", ["system:masters"])
    listed = kube_as(kube, admin).kubectl_run("get", "ojob", "-n", namespace, "-o", "json")
    assert json.loads(listed.stdout)["items"] == []


def test_token_file_changes_are_read_and_a_malformed_one_is_refused(
    kube: Kube, mint_identity: IdentityMinter
) -> None:
    cp = control_plane(kube)
    context = ssl.create_default_context(cafile=str(cp.pki / "ca.crt"))
    before = mint_identity("before", ["system:masters"])
    good = cp.token_file.read_text()
    mark = cp.apiserver_log.stat().st_size
    unread = f"token-{secrets.token_hex(16)}"
    # A new user's line, then a line with too few columns: the whole file is refused.
    malformed = good + f"{unread},dave,uid-dave\nonly,two\n"
    tmp = cp.token_file.with_name("tokens.csv.test")
    tmp.write_text(malformed)
    tmp.replace(cp.token_file)
    try:
        status, _ = raw_request(cp.server_url + "/apis", context, before.token)
        assert status == 200, "the tokens read before stay in force"
        status, _ = raw_request(cp.server_url + "/apis", context, unread)
        assert status == 401, "nothing of a malformed file is taken"

        def refusal_logged() -> bool:
            with cp.apiserver_log.open("rb") as log:
                log.seek(mark)
                return b"refused, the tokens read before stay in force" in log.read()

        wait_for(refusal_logged, timeout=30, description="the refusal in the server's log")
    finally:
        tmp.write_text(good)
        tmp.replace(cp.token_file)
    after = mint_identity("after", ["system:masters"])
    for user in (before, after):
        status, _ = raw_request(cp.server_url + "/apis", context, user.token)
        assert status == 200, user.name


def test_a_malformed_token_file_stops_the_server_at_start_up(kube: Kube, tmp_path: Path) -> None:
    cp = control_plane(kube)
    bad = tmp_path / "tokens.csv"
    bad.write_text('token-1,alice,uid-1\n"unclosed,bob,uid-2\n')
    other = ControlPlane(
        cp.toolchain,
        data_dir=tmp_path / "cp",
        extra_apiserver_args=[f"--token-auth-file={bad}"],  # the last of the flag wins
        ready_timeout=60,
    )
    with pytest.raises(ControlPlaneError) as failed:
        other.start()
    other.stop()
    assert f"--token-auth-file {bad} is malformed" in str(failed.value)
