"""Host identity: an enrollment token enrolls one new host, credentials rotate and revoke, and a
host reads only the images of its own servers (docs/security.md, "Compromised compute host")."""

from __future__ import annotations

import threading
from collections.abc import Callable
from typing import Any

import httpx
from fastapi.testclient import TestClient

from tests.agent_factories import (
    EnrolledHost,
    enroll_host,
    enrollment_token,
    inventory,
    make_server,
    set_server,
)
from tests.api.route_table import operations
from tests.factories import IMAGE_BYTES, bearer, make_account, make_image, unique

RAW = IMAGE_BYTES["raw"]


def _enroll(client: TestClient | httpx.Client, token: str, name: str) -> httpx.Response:
    return client.post("/v1/agent/enroll", json={
        "token": token, "name": name, "availability_zone": "nova",
        "libvirt_uri": "test:///default", "virt_type": "qemu", "architecture": "x86_64"})


def _heartbeat(client: TestClient, credential: str) -> httpx.Response:
    return client.post("/v1/agent/heartbeat", headers=bearer(credential), json={"observed": []})


def test_enrolling_an_existing_name_is_409_and_spends_nothing(
        client: TestClient, admin: dict[str, str]) -> None:
    host = enroll_host(client, admin)
    token = enrollment_token(client, admin)

    r = _enroll(client, token, host.name)
    assert (r.status_code, r.json()["code"]) == (409, "host_exists")
    # The real agent keeps its host: same id, its credential still works.
    assert _heartbeat(client, host.credential).json()["host_id"] == host.id
    # The token was not consumed: it still enrolls exactly one new host.
    r = _enroll(client, token, unique("node"))
    assert r.status_code == 201, r.text
    assert r.json()["host_id"] != host.id
    r = _enroll(client, token, unique("node"))
    assert (r.status_code, r.json()["code"]) == (401, "invalid_enrollment_token")


def test_an_unknown_token_does_not_reveal_whether_a_host_name_exists(
        client: TestClient, admin: dict[str, str]) -> None:
    host = enroll_host(client, admin)
    for name in (host.name, unique("node")):
        r = _enroll(client, "mce_not-a-token", name)
        assert (r.status_code, r.json()["code"]) == (401, "invalid_enrollment_token")


def test_concurrent_enrollments_of_one_new_name_enroll_it_once(
        client: TestClient, admin: dict[str, str], live_api: Callable[[int], list[str]]) -> None:
    urls = live_api(2)
    name = unique("node")
    tokens = [enrollment_token(client, admin) for _ in range(4)]
    answers: list[httpx.Response] = []
    barrier = threading.Barrier(len(tokens))

    def go(i: int) -> None:
        with httpx.Client(base_url=urls[i % 2], timeout=30) as c:
            barrier.wait()
            answers.append(_enroll(c, tokens[i], name))

    threads = [threading.Thread(target=go, args=(i,)) for i in range(len(tokens))]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    statuses = sorted(r.status_code for r in answers)
    assert statuses == [201, 409, 409, 409], [r.text for r in answers]
    assert {r.json()["code"] for r in answers if r.status_code == 409} == {"host_exists"}


def test_an_admin_rotation_replaces_the_credential_and_shows_it_once(
        client: TestClient, admin: dict[str, str]) -> None:
    host = enroll_host(client, admin)
    r = client.post(f"/v1/hosts/{host.id}/credential", headers=admin)
    assert r.status_code == 201, r.text
    new = r.json()["credential"]
    assert r.json()["host_id"] == host.id and new != host.credential
    r = _heartbeat(client, host.credential)
    assert (r.status_code, r.json()["code"]) == (401, "invalid_host_credential")
    assert _heartbeat(client, new).status_code == 200
    # The secret is not shown anywhere else.
    assert new not in client.get(f"/v1/hosts/{host.id}", headers=admin).text
    r = client.post("/v1/hosts/00000000-0000-0000-0000-000000000000/credential", headers=admin)
    assert (r.status_code, r.json()["code"]) == (404, "host_not_found")


def _host_ops() -> list[Any]:
    from api.main import create_app

    return [op for op in operations(create_app()) if op.guard == "host"]


def _call_as(client: TestClient, op: Any, server_id: str, credential: str) -> httpx.Response:
    url = op.url({"server_id": server_id, "migration_file": "disk"})
    headers = bearer(credential)
    if op.path.endswith("/console"):
        return client.request(op.method, url, headers=headers, content=b"tail")
    body: dict[str, Any] = {
        "/v1/agent/inventory": inventory(),
        "/v1/agent/heartbeat": {"observed": []},
        "/v1/agent/servers/{server_id}/observations": {
            "state": "running", "seen_at": "2026-01-01T00:00:00Z",
            "idempotency_key": unique("k")},
    }.get(op.path, {})
    if op.method == "GET":
        return client.get(url, headers=headers)
    return client.request(op.method, url, headers=headers, json=body)


def test_a_revoked_credential_is_refused_on_every_agent_route_until_rotated(
        client: TestClient, admin: dict[str, str]) -> None:
    host = enroll_host(client, admin)
    acct = make_account(client, admin)
    server_id = make_server(client, acct.project_id, host.id, status="ACTIVE", task_state=None)
    ops = _host_ops()
    assert {(op.method, op.path) for op in ops} >= {
        ("POST", "/v1/agent/heartbeat"), ("GET", "/v1/agent/servers"),
        ("POST", "/v1/agent/credential")}

    assert client.delete(f"/v1/hosts/{host.id}/credential", headers=admin).status_code == 204
    refused = []
    for op in ops:
        r = _call_as(client, op, server_id, host.credential)
        refused.append((str(op), r.status_code, r.json().get("code")))
    assert refused == [(str(op), 401, "invalid_host_credential") for op in ops]
    # The host keeps its servers; an admin hands out a new credential.
    assert client.get(f"/v1/hosts/{host.id}", headers=admin).json()["servers"] == 1
    new = client.post(f"/v1/hosts/{host.id}/credential", headers=admin).json()["credential"]
    assert _heartbeat(client, new).status_code == 200


def test_a_long_poll_ends_with_401_when_its_credential_is_revoked(
        client: TestClient, admin: dict[str, str], live_api: Callable[[int], list[str]]) -> None:
    url = live_api(1)[0]
    host = enroll_host(client, admin)
    cursor = client.get("/v1/agent/servers", headers=host.headers).json()["cursor"]
    answer: list[httpx.Response] = []
    started = threading.Event()

    def poll() -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            started.set()
            answer.append(c.get("/v1/agent/servers", headers=host.headers,
                                params={"since": cursor, "wait": 30}))

    t = threading.Thread(target=poll)
    t.start()
    started.wait()
    assert client.delete(f"/v1/hosts/{host.id}/credential", headers=admin).status_code == 204
    t.join()
    assert (answer[0].status_code, answer[0].json()["code"]) == (401, "invalid_host_credential")


def test_an_agent_rotates_its_own_credential(client: TestClient, admin: dict[str, str]) -> None:
    host = enroll_host(client, admin)
    r = client.post("/v1/agent/credential", headers=host.headers)
    assert r.status_code == 201, r.text
    assert r.json()["host_id"] == host.id
    new = r.json()["credential"]
    assert _heartbeat(client, host.credential).json()["code"] == "invalid_host_credential"
    assert _heartbeat(client, new).json()["host_id"] == host.id


def test_a_deleted_hosts_credential_is_refused(client: TestClient, admin: dict[str, str]) -> None:
    host = enroll_host(client, admin)
    assert client.delete(f"/v1/hosts/{host.id}", headers=admin).status_code == 204
    r = _heartbeat(client, host.credential)
    assert (r.status_code, r.json()["code"]) == (401, "invalid_host_credential")


def test_a_disabled_host_keeps_serving_its_servers(client: TestClient,
                                                    admin: dict[str, str]) -> None:
    # Disabled means "no new placements" (docs/security.md): the agent still runs what it has.
    host = enroll_host(client, admin)
    r = client.patch(f"/v1/hosts/{host.id}", headers=admin, json={"enabled": False})
    assert r.status_code == 200
    assert _heartbeat(client, host.credential).status_code == 200


def _download(client: TestClient, host: EnrolledHost, image_id: str) -> httpx.Response:
    return client.get(f"/v1/images/{image_id}/file", headers=host.headers)


def test_a_host_downloads_only_the_images_of_its_own_servers(
        client: TestClient, admin: dict[str, str]) -> None:
    tenant, other = make_account(client, admin), make_account(client, admin)
    ours, theirs = enroll_host(client, admin), enroll_host(client, admin)
    kernel = make_image(client, tenant.headers, disk_format="aki")
    ramdisk = make_image(client, tenant.headers, disk_format="ari")
    disk = make_image(client, tenant.headers, data=RAW + b"ours")
    private = make_image(client, other.headers, data=RAW + b"private")
    public = make_image(client, admin, visibility="public")
    make_server(client, tenant.project_id, ours.id,
                image_properties={"kernel_id": kernel["id"], "ramdisk_id": ramdisk["id"]})
    on_ours = make_server(client, tenant.project_id, ours.id)
    set_server(client, on_ours, image_id=disk["id"])
    set_server(client, make_server(client, other.project_id, theirs.id),
               image_id=private["id"])

    assert _download(client, ours, disk["id"]).content == RAW + b"ours"
    assert _download(client, ours, kernel["id"]).status_code == 200
    assert _download(client, ours, ramdisk["id"]).status_code == 200
    for image in (private, public):
        r = _download(client, ours, image["id"])
        assert r.status_code == 404, image
        assert r.json()["code"] == "image_not_found"
    assert _download(client, theirs, private["id"]).status_code == 200
    # Once the server is gone, so is the host's access to its image.
    set_server(client, on_ours, status="DELETED")
    assert _download(client, ours, disk["id"]).status_code == 404
    # The session's database is shared: a public image left behind would show in every
    # other test's image list.
    assert client.delete(f"/v1/images/{public['id']}", headers=admin).status_code == 204
