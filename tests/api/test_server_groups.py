"""Server groups through HTTP: lifecycle, members, in-use deletes, isolation, roles."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.agent_factories import observe
from tests.api.test_servers import boot, problem
from tests.catalog_rows import make_image_row
from tests.factories import Account, make_account

# Servers created through the API need a host to be placed on.
pytestmark = pytest.mark.usefixtures("pool")

POLICIES = ("affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity")


def make_group(client: TestClient, acct: Account, policy: str = "anti-affinity",
               name: str = "web") -> dict[str, Any]:
    r = client.post("/v1/server-groups", json={"name": name, "policy": policy},
                    headers=acct.headers)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def test_groups_are_created_listed_shown_and_deleted(
    client: TestClient, admin: dict[str, str]
) -> None:
    acct = make_account(client, admin)
    groups = [make_group(client, acct, policy) for policy in POLICIES]
    assert [(g["policy"], g["members"], g["project_id"]) for g in groups] == [
        (p, [], acct.project_id) for p in POLICIES]
    listed = client.get("/v1/server-groups", headers=acct.headers).json()["server_groups"]
    assert [g["id"] for g in listed] == [g["id"] for g in groups]
    shown = client.get(f"/v1/server-groups/{groups[0]['id']}", headers=acct.headers).json()
    assert shown == groups[0]
    assert client.delete(f"/v1/server-groups/{groups[0]['id']}",
                         headers=acct.headers).status_code == 204
    problem(client.get(f"/v1/server-groups/{groups[0]['id']}", headers=acct.headers),
            404, "server_group_not_found")


def test_members_are_its_live_servers_and_a_group_in_use_cannot_go(
    client: TestClient, admin: dict[str, str], database_url: str, pool: dict[str, str]
) -> None:
    acct = make_account(client, admin)
    group = make_group(client, acct)
    server = boot(client, acct, database_url, server_group=group["id"])
    assert server["server_group_id"] == group["id"]
    shown = client.get(f"/v1/server-groups/{group['id']}", headers=acct.headers).json()
    assert shown["members"] == [server["id"]]
    p = problem(client.delete(f"/v1/server-groups/{group['id']}", headers=acct.headers),
                409, "server_group_in_use")
    assert p["members"] == [server["id"]]
    client.delete(f"/v1/servers/{server['id']}", headers=acct.headers)
    observe(client, pool, server["id"], "absent")  # its agent confirms the domain is gone
    shown = client.get(f"/v1/server-groups/{group['id']}", headers=acct.headers).json()
    assert shown["members"] == []
    assert client.delete(f"/v1/server-groups/{group['id']}",
                         headers=acct.headers).status_code == 204


def test_bad_group_input_is_422_and_writes_nothing(
    client: TestClient, admin: dict[str, str]
) -> None:
    acct = make_account(client, admin)
    for body in ({"name": "g", "policy": "together"}, {"name": "g"}, {"policy": "affinity"},
                 {"name": "x" * 10_000, "policy": "affinity"},
                 {"name": "tab\there", "policy": "affinity"},
                 {"name": 5, "policy": "affinity"},
                 {"name": "g", "policy": "affinity", "rules": {}}):
        problem(client.post("/v1/server-groups", json=body, headers=acct.headers),
                422, "invalid_input")
    assert client.get("/v1/server-groups", headers=acct.headers).json()["server_groups"] == []


def test_another_project_gets_404_and_readers_get_403(
    client: TestClient, admin: dict[str, str], database_url: str
) -> None:
    a = make_account(client, admin)
    b = make_account(client, admin)
    reader = make_account(client, admin, role="reader", project_id=a.project_id)
    group = make_group(client, a)
    for method in ("GET", "DELETE"):
        problem(client.request(method, f"/v1/server-groups/{group['id']}", headers=b.headers),
                404, "server_group_not_found")
    assert client.get("/v1/server-groups", headers=b.headers).json()["server_groups"] == []
    # B cannot put a server into A's group either.
    image = make_image_row(database_url, b.project_id)
    problem(client.post("/v1/servers", headers=b.headers, json={
        "name": "x", "flavor": "tiny", "image": image, "server_group": group["id"]}),
        404, "server_group_not_found")
    # Readers see the group but cannot create or delete one.
    assert client.get(f"/v1/server-groups/{group['id']}",
                      headers=reader.headers).status_code == 200
    problem(client.post("/v1/server-groups", json={"name": "g", "policy": "affinity"},
                        headers=reader.headers), 403, "read_only_role")
    problem(client.delete(f"/v1/server-groups/{group['id']}", headers=reader.headers),
            403, "read_only_role")
    assert client.get(f"/v1/server-groups/{group['id']}", headers=a.headers).status_code == 200
