"""The OpenStack surface over HTTP: identity, the guards and isolation of every operation
(enumerated from the app, as tests/api/test_isolation.py does for /v1, but with OpenStack's
error shapes), name look-ups, and the same quota, placement and billing as /v1."""

from __future__ import annotations

import re
import uuid
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.agent_factories import observe
from tests.api.route_table import Operation, operations
from tests.factories import Account, make_account, make_flavor, make_image, unique

# Anonymous by design: discovery, and the token request whose body is the credential.
OS_PUBLIC = {("GET", "/identity"), ("GET", "/identity/"), ("GET", "/identity/v3"),
             ("GET", "/identity/v3/"), ("POST", "/identity/v3/auth/tokens"),
             ("GET", "/compute"), ("GET", "/compute/"), ("GET", "/compute/v2.1"),
             ("GET", "/compute/v2.1/"), ("GET", "/image"), ("GET", "/image/"),
             ("GET", "/image/versions")}
# The action route is open to readers for os-getConsoleOutput; os-start etc. need a writer.
PLAUSIBLE: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/compute/v2.1/servers/{server_id}/action"): {"os-stop": None},
    ("POST", "/identity/v3/users/{user_id}/application_credentials"): {
        "application_credential": {"name": "cred-x"}},
}
RAW = {("PUT", "/image/v2/images/{image_id}/file")}


def _nova_fault(r: Any, status: int) -> str | None:
    """None when ``r`` is the error the owning OpenStack service would send."""
    if r.status_code != status:
        return f"{r.status_code} != {status}: {r.text[:200]}"
    if r.headers.get("content-type", "").startswith("application/problem+json"):
        return "problem+json on the OpenStack surface"
    body = r.json()
    if r.request.url.path.startswith("/compute"):
        ((_, fault),) = body.items()
        ok = fault.get("code") == status and fault.get("message")
    else:
        ok = body.get("error", {}).get("code") == status and body["error"].get("message")
    return None if ok else f"not an OpenStack error body: {body}"


@pytest.fixture(scope="module")
def os_ops(client: TestClient) -> list[Operation]:
    return operations(client.app, openstack=True)  # type: ignore[arg-type]


def tok(account: Account) -> dict[str, str]:
    return {"X-Auth-Token": account.token}


@dataclass
class World:
    a: Account
    a_reader: Account
    b: Account
    server_id: str
    image_id: str
    group_id: str
    flavor_id: str
    keypair: str
    cred_id: str
    host_id: str

    def values(self) -> dict[str, str]:
        return {"server_id": self.server_id, "image_id": self.image_id,
                "group_id": self.group_id, "flavor_id": self.flavor_id, "name": self.keypair,
                "project_id": self.a.project_id, "user_id": self.a.user_id,
                "cred_id": self.cred_id, "host_id": self.host_id}


@pytest.fixture(scope="module")
def world(client: TestClient, admin: dict[str, str], _pool_host: dict[str, str]) -> World:
    r = client.post("/v1/agent/heartbeat", headers=_pool_host, json={"observed": []})
    assert r.status_code == 200, r.text
    a = make_account(client, admin)
    a_reader = make_account(client, admin, "reader", project_id=a.project_id)
    b = make_account(client, admin)
    image = make_image(client, a.headers)
    flavor = make_flavor(client, admin, is_public=False)
    r = client.post(f"/v1/flavors/{flavor['id']}/access/{a.project_id}", headers=admin)
    assert r.status_code == 200, r.text
    r = client.post("/compute/v2.1/os-server-groups", headers=tok(a),
                    json={"server_group": {"name": unique("grp"),
                                           "policies": ["anti-affinity"]}})
    assert r.status_code == 200, r.text
    group_id = r.json()["server_group"]["id"]
    r = client.post("/compute/v2.1/os-keypairs", headers=tok(a),
                    json={"keypair": {"name": unique("key")}})
    assert r.status_code == 200, r.text
    keypair = r.json()["keypair"]["name"]
    r = client.post("/compute/v2.1/servers", headers=tok(a), json={
        "server": {"name": unique("vm"), "imageRef": image["id"], "flavorRef": flavor["id"],
                   "key_name": keypair, "networks": "auto"},
        "OS-SCH-HNT:scheduler_hints": {"group": group_id}})
    assert r.status_code == 202, r.text
    server_id = r.json()["server"]["id"]
    observe(client, _pool_host, server_id, "running")
    r = client.post(f"/identity/v3/users/{a.user_id}/application_credentials", headers=tok(a),
                    json={"application_credential": {"name": unique("cred")}})
    assert r.status_code == 201, r.text
    host_id = client.get("/v1/hosts", headers=admin).json()[0]["id"]
    return World(a, a_reader, b, server_id, image["id"], group_id, flavor["id"], keypair,
                 r.json()["application_credential"]["id"], host_id)


def _call(client: TestClient, op: Operation, url: str, headers: dict[str, str]) -> Any:
    if (op.method, op.path) in RAW:
        return client.request(op.method, url, headers=headers, content=b"x" * 16)
    body = PLAUSIBLE.get((op.method, op.path))
    if op.method in ("POST", "PUT"):
        return client.request(op.method, url, headers=headers, json=body or {})
    return client.request(op.method, url, headers=headers)


def test_every_openstack_operation_is_guarded_or_public_on_purpose(
        os_ops: list[Operation]) -> None:
    assert len(os_ops) > 40
    assert [str(op) for op in os_ops if op.guard is None
            and (op.method, op.path) not in OS_PUBLIC] == []
    # Every write needs a writer or an admin, except the action route, which checks the
    # role per action (os-getConsoleOutput is a read; see the reader test below).
    assert [str(op) for op in os_ops if op.method in ("POST", "PUT", "DELETE")
            and op.guard == "user" and not op.path.endswith("/action")] == []


def test_without_a_token_every_guarded_operation_answers_401_in_openstack_shape(
        client: TestClient, os_ops: list[Operation], world: World) -> None:
    wrong = [f"{op}: {why}" for op in os_ops if (op.method, op.path) not in OS_PUBLIC
             if (why := _nova_fault(_call(client, op, op.url(world.values()), {}), 401))]
    assert wrong == []
    r = client.get("/compute/v2.1/servers", headers={"X-Auth-Token": "not-a-token"})
    assert _nova_fault(r, 401) is None


def test_members_get_403_on_admin_operations_and_readers_on_writes(
        client: TestClient, os_ops: list[Operation], world: World) -> None:
    wrong = []
    for op in os_ops:
        if op.guard == "admin":
            r = _call(client, op, op.url(world.values()), tok(world.a))
        elif op.guard == "writer" or op.path.endswith("/action"):
            r = _call(client, op, op.url(world.values()), tok(world.a_reader))
        else:
            continue
        if why := _nova_fault(r, 403):
            wrong.append(f"{op}: {why}")
    assert wrong == []
    # A reader may still read the console.
    r = client.post(f"/compute/v2.1/servers/{world.server_id}/action", headers=tok(
        world.a_reader), json={"os-getConsoleOutput": {"length": 5}})
    assert r.status_code == 200 and r.json() == {"output": ""}


def test_another_project_gets_404_on_every_operation_on_a_projects_objects(
        client: TestClient, os_ops: list[Operation], world: World) -> None:
    wrong = []
    for op in os_ops:
        if not op.params or op.guard == "admin":
            continue
        r = _call(client, op, op.url(world.values()), tok(world.b))
        if why := _nova_fault(r, 404):
            wrong.append(f"{op}: {why}")
    assert wrong == []
    # Nothing was touched: A still sees its server, image, key pair and group.
    for path in (f"/compute/v2.1/servers/{world.server_id}",
                 f"/compute/v2.1/os-keypairs/{world.keypair}",
                 f"/compute/v2.1/os-server-groups/{world.group_id}",
                 f"/image/v2/images/{world.image_id}"):
        assert client.get(path, headers=tok(world.a)).status_code == 200, path
    listed = client.get("/compute/v2.1/servers/detail", headers=tok(world.b)).json()
    assert listed == {"servers": []}
    assert world.image_id not in {i["id"] for i in client.get(
        "/image/v2/images", headers=tok(world.b)).json()["images"]}
    assert client.get("/compute/v2.1/os-keypairs", headers=tok(world.b)).json() == {
        "keypairs": []}


# (A ".." segment never reaches the app: HTTP clients normalise it away.)
@pytest.mark.parametrize("value", ["a name with spaces", "x" * 300, "nul\x00byte", "tiny"])
def test_names_and_malformed_values_in_paths_are_404_never_422(
        client: TestClient, os_ops: list[Operation], world: World, value: str) -> None:
    wrong = []
    for op in os_ops:
        if not op.params or op.guard == "admin" or op.method != "GET":
            continue
        values = dict.fromkeys(op.params, value)
        r = client.get(op.url(values).replace("\x00", "%00"), headers=tok(world.a))
        if why := _nova_fault(r, 404):
            wrong.append(f"{op}: {why}")
    assert wrong == []


def test_identity_discovery_password_and_application_credential_auth(
        client: TestClient, admin: dict[str, str]) -> None:
    for path in ("/identity", "/identity/"):
        r = client.get(path)
        assert r.status_code == 300
        assert r.json()["versions"]["values"][0]["links"][0]["href"].endswith("/identity/v3/")
    for path in ("/identity/v3", "/identity/v3/"):
        assert client.get(path).json()["version"]["id"] == "v3.14"
    project = client.post("/v1/projects", json={"name": unique("p")}, headers=admin).json()
    name, password = unique("u"), "pw-" + uuid.uuid4().hex
    user = client.post("/v1/users", headers=admin, json={
        "name": name, "password": password, "project_id": project["id"], "role": "member"})
    assert user.status_code == 201, user.text

    def auth(user_ref: dict[str, Any], scope: dict[str, Any], pw: str = password) -> Any:
        return client.post("/identity/v3/auth/tokens", json={"auth": {
            "identity": {"methods": ["password"],
                         "password": {"user": user_ref | {"password": pw}}},
            "scope": {"project": scope}}})

    for user_ref, scope in (
            ({"name": name, "domain": {"name": "Default"}},
             {"name": project["name"], "domain": {"id": "default"}}),
            ({"id": user.json()["id"]}, {"id": project["id"]})):
        r = auth(user_ref, scope)
        assert r.status_code == 201, r.text
        token = r.json()["token"]
        assert token["project"]["id"] == project["id"] and token["user"]["name"] == name
        assert token["methods"] == ["password"] and token["expires_at"].endswith("Z")
        assert {e["interface"] for c in token["catalog"] for e in c["endpoints"]} == {
            "public", "internal", "admin"}
        assert {c["type"] for c in token["catalog"]} == {"identity", "compute", "image"}
        secret = r.headers["X-Subject-Token"]
        v = client.get("/identity/v3/auth/tokens",
                       headers={"X-Auth-Token": secret, "X-Subject-Token": secret})
        assert v.status_code == 200 and v.json()["token"]["user"]["id"] == user.json()["id"]
    assert _nova_fault(auth({"name": name, "domain": {"name": "Default"}},
                            {"name": project["name"]}, "wrong"), 401) is None
    assert _nova_fault(auth({"name": name, "domain": {"name": "Other"}},
                            {"name": project["name"]}), 401) is None
    r = client.get("/identity/v3/auth/tokens",
                   headers={"X-Auth-Token": secret, "X-Subject-Token": "nope"})
    assert _nova_fault(r, 404) is None

    cred = client.post(f"/identity/v3/users/{user.json()['id']}/application_credentials",
                       headers={"X-Auth-Token": secret},
                       json={"application_credential": {"name": "ci"}})
    assert cred.status_code == 201, cred.text
    ac = cred.json()["application_credential"]
    for ref in ({"id": ac["id"], "secret": ac["secret"]},
                {"name": "ci", "user": {"name": name, "domain": {"name": "Default"}},
                 "secret": ac["secret"]}):
        r = client.post("/identity/v3/auth/tokens", json={"auth": {"identity": {
            "methods": ["application_credential"], "application_credential": ref}}})
        assert r.status_code == 201, r.text
        assert r.json()["token"]["application_credential"]["id"] == ac["id"]
        assert client.get("/compute/v2.1/servers", headers={
            "X-Auth-Token": r.headers["X-Subject-Token"]}).status_code == 200
    r = client.post("/identity/v3/auth/tokens", json={"auth": {"identity": {
        "methods": ["application_credential"],
        "application_credential": {"id": ac["id"], "secret": "wrong-secret"}}}})
    assert _nova_fault(r, 401) is None


def _usage(client: TestClient, admin: dict[str, str], project_id: str) -> dict[str, int]:
    r = client.get(f"/v1/quotas/{project_id}", headers=admin)
    assert r.status_code == 200, r.text
    # The servers' usage (each project also holds the image it uploaded).
    usage: dict[str, int] = {k: v for k, v in r.json()["usage"].items()
                             if k not in ("images", "image_bytes")}
    return usage


def test_quota_placement_and_billing_are_the_same_through_v1_and_compute(
        client: TestClient, admin: dict[str, str], pool: dict[str, str]) -> None:
    flavor = make_flavor(client, admin, vcpus=2, ram_mb=1024, disk_gb=2)
    # No host carries this aggregate tag: placement must refuse.
    nowhere = make_flavor(client, admin, extra_specs={unique("tag"): "true"})
    via_v1, via_os = make_account(client, admin), make_account(client, admin)
    for acc in (via_v1, via_os):
        r = client.put(f"/v1/quotas/{acc.project_id}", headers=admin, json={"instances": 1})
        assert r.status_code == 200, r.text
    image_v1 = make_image(client, via_v1.headers)["id"]
    image_os = make_image(client, via_os.headers)["id"]

    def v1(image: str, flavor_id: str) -> Any:
        return client.post("/v1/servers", headers=via_v1.headers, json={
            "name": unique("vm"), "flavor": flavor_id, "image": image})

    def nova(image: str, flavor_id: str) -> Any:
        return client.post("/compute/v2.1/servers", headers=tok(via_os), json={"server": {
            "name": unique("vm"), "flavorRef": flavor_id, "imageRef": image}})

    # Placement refusal: the same rule and message, nothing written on either path.
    refused_v1, refused_os = v1(image_v1, nowhere["id"]), nova(image_os, nowhere["id"])
    assert refused_v1.status_code == 409 and refused_v1.json()["code"] == "no_valid_host"
    assert _nova_fault(refused_os, 409) is None
    # The same sentence; its counts may differ by a host whose heartbeat went stale between
    # the two requests (the session's database holds hundreds of hosts), so compare the
    # sentence with its numbers masked.
    def masked(text: str) -> str:
        return re.sub(r"\d+", "N", text)
    assert masked(refused_os.json()["conflictingRequest"]["message"]) == masked(
        refused_v1.json()["detail"])
    assert _usage(client, admin, via_v1.project_id) == _usage(
        client, admin, via_os.project_id) == {"instances": 0, "vcpus": 0, "ram_mb": 0,
                                               "disk_gb": 0}

    # Both succeed once, with the same quota usage.
    made_v1, made_os = v1(image_v1, flavor["id"]), nova(image_os, flavor["id"])
    assert made_v1.status_code == made_os.status_code == 202, (made_v1.text, made_os.text)
    assert made_os.headers["OpenStack-API-Version"] == "compute 2.1"
    assert _usage(client, admin, via_v1.project_id) == _usage(
        client, admin, via_os.project_id) == {"instances": 1, "vcpus": 2, "ram_mb": 1024,
                                               "disk_gb": 2}
    detail = client.get(f"/compute/v2.1/os-quota-sets/{via_os.project_id}/detail",
                        headers=tok(via_os)).json()["quota_set"]
    assert (detail["instances"]["in_use"], detail["cores"]["in_use"],
            detail["ram"]["in_use"]) == (1, 2, 1024)
    assert (detail["instances"]["limit"], detail["cores"]["limit"]) == (1, 20)
    defaults = client.get(f"/compute/v2.1/os-quota-sets/{via_os.project_id}/defaults",
                          headers=tok(via_os)).json()["quota_set"]
    assert (defaults["instances"], defaults["cores"], defaults["ram"]) == (10, 20, 51200)

    # The quota refuses the second one on both paths, with the same message (Nova: 403).
    over_v1, over_os = v1(image_v1, flavor["id"]), nova(image_os, flavor["id"])
    assert over_v1.status_code == 409 and over_v1.json()["code"] == "quota_exceeded"
    assert _nova_fault(over_os, 403) is None
    assert over_os.json()["forbidden"]["message"] == over_v1.json()["detail"]

    # Billing: the same ledger for both once their agent sees them run and stop.
    ids = (made_v1.json()["id"], made_os.json()["server"]["id"])
    ledgers = []
    for sid in ids:
        observe(client, pool, sid, "running")
        ledger = client.get(f"/v1/usage/servers/{sid}", headers=admin).json()
        ledgers.append([(e["kind"], e["vcpus"], e["ram_mb"], e["disk_gb"], e["flavor_id"])
                        for e in ledger["entries"]])
    assert ledgers[0] == ledgers[1] == [("created", 2, 1024, 2, flavor["id"]),
                                        ("running", 2, 1024, 2, flavor["id"])]
    r = client.delete(f"/compute/v2.1/servers/{ids[1]}", headers=tok(via_os))
    assert r.status_code == 204
    r = client.delete(f"/v1/servers/{ids[0]}", headers=via_v1.headers)
    assert r.status_code == 202
    for sid in ids:
        observe(client, pool, sid, "absent")
    assert _usage(client, admin, via_v1.project_id) == _usage(
        client, admin, via_os.project_id) == {"instances": 0, "vcpus": 0, "ram_mb": 0,
                                               "disk_gb": 0}


def test_v1_key_pairs_and_key_name_at_server_create(
        client: TestClient, admin: dict[str, str], pool: dict[str, str]) -> None:
    acc = make_account(client, admin)
    r = client.post("/v1/keypairs", headers=acc.headers, json={"name": "k1"})
    assert r.status_code == 201, r.text
    generated = r.json()
    assert generated["private_key"].startswith("-----BEGIN OPENSSH PRIVATE KEY-----")
    assert generated["public_key"].startswith("ssh-ed25519 ")
    shown = client.get("/v1/keypairs/k1", headers=acc.headers).json()
    assert "private_key" not in shown and shown["fingerprint"] == generated["fingerprint"]
    again = client.post("/v1/keypairs", headers=acc.headers, json={"name": "k1"})
    assert again.status_code == 409 and again.json()["code"] == "keypair_exists"
    image = make_image(client, acc.headers)["id"]
    r = client.post("/v1/servers", headers=acc.headers, json={
        "name": "vm", "flavor": "tiny", "image": image, "key_name": "k1"})
    assert r.status_code == 202, r.text
    nova = client.get(f"/compute/v2.1/servers/{r.json()['id']}", headers=tok(acc)).json()
    assert nova["server"]["key_name"] == "k1"
    r = client.post("/v1/servers", headers=acc.headers, json={
        "name": "vm", "flavor": "tiny", "image": image, "key_name": "nope"})
    assert r.status_code == 404 and r.json()["code"] == "keypair_not_found"
    r = client.post("/v1/servers", headers=acc.headers, json={
        "name": "vm", "flavor": "tiny", "image": image, "key_name": "k1",
        "key_data": generated["public_key"]})
    assert r.status_code == 422 and r.json()["code"] == "key_name_with_key_data"
    other = make_account(client, admin)
    assert client.get("/v1/keypairs/k1", headers=other.headers).status_code == 404
    assert client.delete("/v1/keypairs/k1", headers=acc.headers).status_code == 204
    assert client.get("/v1/keypairs", headers=acc.headers).json() == {"keypairs": []}


def test_admin_views_hosts_and_only_admins_see_a_servers_host(
        client: TestClient, admin: dict[str, str], world: World) -> None:
    as_admin = {"X-Auth-Token": admin["Authorization"].split()[1]}
    hypervisors = client.get("/compute/v2.1/os-hypervisors/detail", headers=as_admin).json()
    pool = next(h for h in hypervisors["hypervisors"] if h["hypervisor_hostname"] == "pool-host")
    assert pool["vcpus"] == 4096 and pool["running_vms"] >= 1 and pool["state"] == "up"
    services = client.get("/compute/v2.1/os-services", headers=as_admin).json()["services"]
    assert {"binary": "nova-compute", "host": "pool-host", "zone": "nova"}.items() <= next(
        s for s in services if s["host"] == "pool-host").items()
    zones = client.get("/compute/v2.1/os-availability-zone/detail",
                       headers=as_admin).json()["availabilityZoneInfo"]
    assert "pool-host" in next(z for z in zones if z["zoneName"] == "nova")["hosts"]
    member_view = client.get("/compute/v2.1/os-availability-zone", headers=tok(world.a)).json()
    assert {"zoneName": "nova", "zoneState": {"available": True}, "hosts": None} in member_view[
        "availabilityZoneInfo"]

    seen_by_admin = client.get(f"/compute/v2.1/servers/{world.server_id}",
                               headers=as_admin).json()["server"]
    seen_by_member = client.get(f"/compute/v2.1/servers/{world.server_id}",
                                headers=tok(world.a)).json()["server"]
    assert seen_by_admin["OS-EXT-SRV-ATTR:host"] == "pool-host"
    assert not any(k.startswith("OS-EXT-SRV-ATTR") for k in seen_by_member)
    assert seen_by_member["status"] == "ACTIVE" and seen_by_member["key_name"] == world.keypair
    assert seen_by_member["OS-EXT-STS:vm_state"] == "active"
    assert seen_by_member["OS-EXT-STS:power_state"] == 1
    # Admins list every project's servers only when they ask for all_tenants.
    everyone = client.get("/compute/v2.1/servers?all_tenants=1", headers=as_admin).json()
    assert world.server_id in {s["id"] for s in everyone["servers"]}
    own = client.get("/compute/v2.1/servers", headers=as_admin).json()
    assert world.server_id not in {s["id"] for s in own["servers"]}


def test_servers_and_images_page_with_limit_marker_and_next_links(
        client: TestClient, admin: dict[str, str], pool: dict[str, str]) -> None:
    acc = make_account(client, admin)
    image = make_image(client, acc.headers)
    second = make_image(client, acc.headers)
    made = []
    for _ in range(3):
        r = client.post("/compute/v2.1/servers", headers=tok(acc), json={"server": {
            "name": unique("vm"), "imageRef": image["id"], "flavorRef": "tiny"}})
        assert r.status_code == 202, r.text
        made.append(r.json()["server"]["id"])
    seen: list[str] = []
    url = "/compute/v2.1/servers/detail?limit=2"
    while url:
        page = client.get(url, headers=tok(acc)).json()
        seen += [s["id"] for s in page["servers"]]
        links = page.get("servers_links", [])
        url = links[0]["href"].split("://", 1)[1].split("/", 1)[1] if links else ""
        url = "/" + url if url else ""
    assert seen == made
    r = client.get("/compute/v2.1/servers?marker=unknown", headers=tok(acc))
    assert _nova_fault(r, 400) is None
    # Unknown query parameters are ignored, as Nova does.
    assert len(client.get("/compute/v2.1/servers?sort_key=x&whatever=1",
                          headers=tok(acc)).json()["servers"]) == 3

    first = client.get("/image/v2/images?limit=1", headers=tok(acc)).json()
    assert len(first["images"]) == 1 and first["next"].startswith("/v2/images?")
    rest = client.get("/image" + first["next"], headers=tok(acc)).json()
    ids = [first["images"][0]["id"]] + [i["id"] for i in rest["images"]]
    assert {image["id"], second["id"]} <= set(ids) and len(ids) == len(set(ids))


@pytest.mark.parametrize("value", ["nul\x00byte", "x" * 5000, "%", "-1"])
def test_query_values_never_break_a_list(client: TestClient, world: World, value: str) -> None:
    # Nova's and Glance's list filters, each given a hostile value: a 4xx or a (filtered)
    # answer, never a 500.
    lists = {"/compute/v2.1/servers": ("name", "status", "limit", "marker", "host",
                                       "all_tenants"),
             "/compute/v2.1/servers/detail": ("name", "status", "limit", "marker"),
             "/image/v2/images": ("name", "status", "limit", "marker", "visibility", "owner"),
             "/compute/v2.1/os-simple-tenant-usage": ("start", "end", "detailed"),
             "/identity/v3/users/{user_id}/application_credentials": ("name",)}
    wrong = []
    for path, params in lists.items():
        for param in params:
            r = client.get(path.format(user_id=world.a.user_id), params={param: value},
                           headers=tok(world.a))
            if r.status_code >= 500 or (r.status_code >= 400 and _nova_fault(
                    r, r.status_code)):
                wrong.append(f"{path}?{param}: {r.status_code} {r.text[:120]}")
    assert wrong == []
