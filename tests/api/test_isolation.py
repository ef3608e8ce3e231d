"""Isolation and roles across the WHOLE API (issue 2, acceptance 3).

Operations are enumerated by introspecting the app (tests/api/route_table.py), so an endpoint
added later is checked here without editing this file: it must declare an authentication
dependency (or be listed as public with a reason), admin endpoints answer 403
``admin_required`` to members and readers, write endpoints answer 403 ``read_only_role`` to
readers, another project's objects answer 404 on every read and action, and host credentials
and user tokens cannot be swapped.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.db import new_id
from tests.agent_factories import EnrolledHost, enroll_host, observe
from tests.api.route_table import PUBLIC, WRITE_METHODS, Operation, operations
from tests.factories import Account, make_account, make_flavor, make_image, unique

# Writes a reader may do, each with the reason: they only give up the caller's own access.
READER_WRITES = {
    ("DELETE", "/v1/auth/tokens/current"),  # log out
    ("DELETE", "/v1/application-credentials/{cred_id}"),  # revoke one's own credential
    ("POST", "/v1/auth/password"),  # change one's own password
    ("POST", "/v1/scheduler/simulate"),  # a question: claims and writes nothing
}

# Path parameters naming objects that are not owned by a project (visible to every user), with
# the reason; every other parameter of a tenant endpoint must be in World.tenant_values.
GLOBAL_PARAMS = {
    "period",  # billing periods are cloud-wide (a month), not a project's object
    "card_id",  # rate cards are the cloud's price list, readable by every user
}

# A plausible body for tenant operations on an object, so that a 404 is not masked by a 422.
PLAUSIBLE_BODY: dict[tuple[str, str], dict[str, Any]] = {
    ("POST", "/v1/servers/{server_id}/actions"): {"action": "stop"},
    ("PATCH", "/v1/scaling-groups/{scaling_group_id}/members/{server_id}"): {"protected": True},
}
# Operations whose body is a raw stream, not JSON.
RAW_BODY = {("PUT", "/v1/images/{image_id}/file"), ("PUT", "/v1/agent/servers/{server_id}/console")}


@dataclass
class World:
    """Project A's objects, and the accounts that poke at them."""

    a_member: Account
    a_reader: Account
    b_member: Account
    b_reader: Account
    host: EnrolledHost
    server_id: str
    image_id: str
    group_id: str
    flavor_id: str
    cred_id: str
    image_name: str
    flavor_name: str
    keypair_name: str
    scaling_group_id: str = ""

    def tenant_values(self, op: Operation) -> dict[str, str]:
        """Path values naming A's objects for ``op``."""
        ref = self.flavor_id if op.path.startswith("/v1/flavors") else self.image_id
        return {"server_id": self.server_id, "image_id": self.image_id, "group_id": self.group_id,
                "project_id": self.a_member.project_id, "cred_id": self.cred_id, "ref": ref,
                "flavor_id": self.flavor_id, "user_id": self.a_member.user_id,
                "host_id": self.host.id, "period": "2026-01", "card_id": new_id(),
                "name": self.keypair_name, "migration_file": "disk",
                "scaling_group_id": self.scaling_group_id}


@pytest.fixture(scope="module")
def ops(client: TestClient) -> list[Operation]:
    """Every operation of the app under test."""
    return operations(client.app)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def world(client: TestClient, admin: dict[str, str], _pool_host: dict[str, str]) -> World:
    """Project A with a running server, an image, a group, a private flavor and a credential."""
    r = client.post("/v1/agent/heartbeat", headers=_pool_host, json={"observed": []})
    assert r.status_code == 200, r.text
    a = make_account(client, admin, "member")
    a_reader = make_account(client, admin, "reader", project_id=a.project_id)
    b = make_account(client, admin, "member")
    b_reader = make_account(client, admin, "reader", project_id=b.project_id)
    image = make_image(client, a.headers, visibility="private")
    flavor = make_flavor(client, admin, is_public=False)
    r = client.post(f"/v1/flavors/{flavor['id']}/access/{a.project_id}", headers=admin)
    assert r.status_code == 200, r.text
    r = client.post("/v1/server-groups", headers=a.headers,
                    json={"name": unique("grp"), "policy": "anti-affinity"})
    assert r.status_code == 201, r.text
    group_id = r.json()["id"]
    r = client.post("/v1/servers", headers=a.headers,
                    json={"name": unique("vm"), "flavor": flavor["id"], "image": image["id"],
                          "server_group": group_id})
    assert r.status_code == 202, r.text
    server_id = r.json()["id"]
    observe(client, _pool_host, server_id, "running")
    r = client.put(f"/v1/agent/servers/{server_id}/console", headers=_pool_host,
                   content=b"login: ")
    assert r.status_code == 204, r.text
    r = client.post("/v1/application-credentials", headers=a.headers,
                    json={"name": unique("cred")})
    assert r.status_code == 201, r.text
    cred_id = r.json()["id"]
    r = client.post("/v1/keypairs", headers=a.headers, json={"name": unique("key")})
    assert r.status_code == 201, r.text
    keypair_name = r.json()["name"]
    r = client.post("/v1/scaling-groups", headers=a.headers, json={
        "name": unique("sg"), "launch": {"flavor": flavor["id"], "image": image["id"]},
        "max_size": 0})
    assert r.status_code == 201, r.text
    return World(a, a_reader, b, b_reader, enroll_host(client, admin), server_id, image["id"],
                 group_id, flavor["id"], cred_id, image["name"], flavor["name"],
                 keypair_name, r.json()["id"])


def _call(client: TestClient, op: Operation, url: str, headers: dict[str, str],
          body: dict[str, Any] | None = None) -> Any:
    if (op.method, op.path) in RAW_BODY:
        return client.request(op.method, url, headers=headers, content=b"x" * 16)
    if op.body_model is not None or body is not None:
        return client.request(op.method, url, headers=headers, json=body or {})
    return client.request(op.method, url, headers=headers)


def _problem(r: Any, status: int, code: str | None = None) -> str | None:
    """A mismatch description, or None when ``r`` is the expected problem document."""
    if r.status_code != status:
        return f"{r.status_code} {r.text[:200]}"
    if not r.headers.get("content-type", "").startswith("application/problem+json"):
        return f"content-type {r.headers.get('content-type')}"
    doc = r.json()
    if code is not None and doc.get("code") != code:
        return f"code {doc.get('code')}"
    if not doc.get("request_id"):
        return "no request_id"
    return None


def _check_all(cases: Sequence[tuple[Operation, Any, int, str | None]]) -> None:
    failures = [f"{op}: {why}" for op, r, status, code in cases
                if (why := _problem(r, status, code)) is not None]
    assert not failures, "\n".join(failures)


def test_the_table_finds_every_documented_operation(client: TestClient,
                                                   ops: list[Operation]) -> None:
    # The introspection must see what /openapi.json publishes, or it would silently skip routes.
    spec = client.get("/openapi.json").json()
    documented = {(m.upper(), p) for p, item in spec["paths"].items() for m in item}
    assert documented == {(op.method, op.path) for op in ops}
    assert len(ops) > 50


def test_every_operation_is_authenticated_or_public_on_purpose(ops: list[Operation]) -> None:
    unguarded = {(op.method, op.path) for op in ops if op.guard is None}
    assert unguarded == PUBLIC


def test_every_write_needs_a_writer_an_admin_or_a_host(ops: list[Operation]) -> None:
    loose = {(op.method, op.path) for op in ops if op.method in WRITE_METHODS
             and op.guard not in ("admin", "writer", "host")}
    assert loose == PUBLIC & loose | READER_WRITES
    assert {(op.method, op.path) for op in ops if op.method in WRITE_METHODS} >= READER_WRITES


def test_without_a_token_every_guarded_operation_answers_401(
        client: TestClient, ops: list[Operation], world: World) -> None:
    cases = []
    for op in ops:
        if (op.method, op.path) in PUBLIC:
            continue
        r = _call(client, op, op.url(world.tenant_values(op)), {})
        cases.append((op, r, 401, "missing_token"))
    _check_all(cases)


def test_members_and_readers_get_403_on_every_admin_operation(
        client: TestClient, ops: list[Operation], world: World) -> None:
    admin_ops = [op for op in ops if op.guard == "admin"]
    assert len(admin_ops) > 20
    cases = []
    for op in admin_ops:
        for who in (world.a_member, world.a_reader):
            r = _call(client, op, op.url(world.tenant_values(op)), who.headers)
            cases.append((op, r, 403, "admin_required"))
    _check_all(cases)


def test_readers_get_403_on_every_write_operation(
        client: TestClient, ops: list[Operation], world: World) -> None:
    writer_ops = [op for op in ops if op.guard == "writer"]
    assert len(writer_ops) >= 8
    cases = []
    for op in writer_ops:
        r = _call(client, op, op.url(world.tenant_values(op)), world.a_reader.headers,
                  PLAUSIBLE_BODY.get((op.method, op.path)))
        cases.append((op, r, 403, "read_only_role"))
    _check_all(cases)


def _tenant_object_ops(ops: list[Operation]) -> list[Operation]:
    """User operations on one of a project's objects (a path parameter that is not global)."""
    return [op for op in ops if op.guard in ("user", "writer", "reader_or_host")
            and set(op.params) - GLOBAL_PARAMS]


def test_another_project_gets_404_on_every_read_and_action_on_a_projects_objects(
        client: TestClient, admin: dict[str, str], ops: list[Operation], world: World) -> None:
    targets = _tenant_object_ops(ops)
    # At least: server show/delete/actions/events/console/usage, image show/delete/file x2,
    # group show/delete, project show/members, quota show, credential delete, flavor show.
    assert len(targets) >= 17, [str(op) for op in targets]
    missing = [str(op) for op in targets if op.body_model is None
               and op.route.body_field is not None and (op.method, op.path) not in RAW_BODY
               and (op.method, op.path) not in PLAUSIBLE_BODY]
    assert not missing, f"add a plausible body to PLAUSIBLE_BODY for {missing}"
    cases = []
    for op in targets:
        url = op.url(world.tenant_values(op))
        body = PLAUSIBLE_BODY.get((op.method, op.path))
        cases.append((op, _call(client, op, url, world.b_member.headers, body), 404, None))
        # A reader's write is refused for its role before any lookup, which reveals nothing.
        expected = (403, "read_only_role") if op.guard == "writer" else (404, None)
        cases.append((op, _call(client, op, url, world.b_reader.headers, body), *expected))
    _check_all(cases)
    # Nothing of A's changed: every read still answers A (and admin) 200.
    for op in targets:
        if op.method == "GET":
            r = client.get(op.url(world.tenant_values(op)), headers=world.a_member.headers)
            assert r.status_code == 200 or op.path == "/v1/usage/servers/{server_id}", (
                str(op), r.text)
    server = client.get(f"/v1/servers/{world.server_id}", headers=admin).json()
    assert (server["status"], server["task_state"]) == ("ACTIVE", None)
    creds = client.get("/v1/application-credentials", headers=world.a_member.headers).json()
    assert world.cred_id in {c["id"] for c in creds}


def test_another_project_cannot_use_a_projects_objects_by_reference(
        client: TestClient, world: World) -> None:
    b = world.b_member.headers
    own_image = make_image(client, b)["id"]
    create = {"name": unique("vm"), "flavor": "tiny", "image": own_image}
    usage = {"start": "2026-01-01T00:00:00Z", "end": "2026-02-01T00:00:00Z",
             "project_id": world.a_member.project_id}
    cases = [
        ("server create with A's image", "image_not_found",
         client.post("/v1/servers", headers=b, json=create | {"image": world.image_id})),
        ("server create with A's image by name", "image_not_found",
         client.post("/v1/servers", headers=b, json=create | {"image": world.image_name})),
        ("server create with A's private flavor", "flavor_not_found",
         client.post("/v1/servers", headers=b, json=create | {"flavor": world.flavor_id})),
        ("server create in A's server group", "server_group_not_found",
         client.post("/v1/servers", headers=b, json=create | {"server_group": world.group_id})),
        ("A's image by name", "image_not_found",
         client.get(f"/v1/images/{world.image_name}", headers=b)),
        ("A's private flavor by name", "flavor_not_found",
         client.get(f"/v1/flavors/{world.flavor_name}", headers=b)),
        ("usage of project A", "project_not_found", client.get("/v1/usage", headers=b,
                                                              params=usage)),
    ]
    failures = [f"{what}: {r.status_code} {r.text[:200]}" for what, code, r in cases
                if r.status_code != 404 or r.json().get("code") != code]
    assert not failures, "\n".join(failures)
    r = client.get("/v1/servers", headers=b, params={"all_projects": "true"})
    assert world.server_id not in {s["id"] for s in r.json().get("servers", [])}
    for path, key in (("/v1/images", None), ("/v1/server-groups", "server_groups")):
        listed = client.get(path, headers=b).json()
        items = listed if key is None else listed[key]
        assert not {world.image_id, world.group_id} & {i["id"] for i in items}


def test_host_credentials_are_refused_by_every_user_operation(
        client: TestClient, ops: list[Operation], world: World) -> None:
    cases = []
    for op in ops:
        if op.guard in ("user", "writer", "admin"):
            r = _call(client, op, op.url(world.tenant_values(op)), world.host.headers)
            cases.append((op, r, 401, "invalid_token"))
    _check_all(cases)


def test_user_tokens_are_refused_by_every_agent_operation(
        client: TestClient, admin: dict[str, str], ops: list[Operation], world: World) -> None:
    host_ops = [op for op in ops if op.guard == "host"]
    assert {op.path for op in host_ops} >= {"/v1/agent/inventory", "/v1/agent/heartbeat",
                                            "/v1/agent/servers"}
    assert all(op.path.startswith("/v1/agent/") for op in host_ops)
    cases = []
    for op in host_ops:
        for who in (admin, world.a_member.headers):
            r = _call(client, op, op.url(world.tenant_values(op)), who)
            cases.append((op, r, 401, "invalid_host_credential"))
    _check_all(cases)


def test_a_host_cannot_report_on_another_hosts_server(client: TestClient,
                                                     world: World) -> None:
    # world.host is a second host; the server runs on the pool host.
    r = client.post(f"/v1/agent/servers/{world.server_id}/observations",
                    headers=world.host.headers,
                    json={"state": "absent", "seen_at": "2026-01-01T00:00:00Z",
                          "idempotency_key": unique("obs")})
    assert r.status_code == 404, r.text
    r = client.put(f"/v1/agent/servers/{world.server_id}/console", headers=world.host.headers,
                   content=b"pwned")
    assert r.status_code == 404, r.text
