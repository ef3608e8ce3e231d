"""Flavors through HTTP: admin CRUD, visibility of private flavors, sharing, bad input."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from tests.factories import (
    insert_server_row,
    make_account,
    make_flavor,
    make_image,
    soft_delete_server_row,
    unique,
)


def ids(flavors: list[dict[str, Any]]) -> set[str]:
    return {f["id"] for f in flavors}


def test_admin_creates_shows_by_id_and_name_and_deletes(
    client: TestClient, admin: dict[str, str]
) -> None:
    flavor = make_flavor(client, admin, vcpus=2, ram_mb=4096, disk_gb=40,
                         extra_specs={"ssd": "true", "hw:numa": "1"})
    assert flavor["extra_specs"] == {"ssd": "true", "hw:numa": "1"}
    assert flavor["is_public"] is True
    by_name = client.get(f"/v1/flavors/{flavor['name']}", headers=admin).json()
    assert by_name == flavor == client.get(f"/v1/flavors/{flavor['id']}", headers=admin).json()
    assert client.delete(f"/v1/flavors/{flavor['id']}", headers=admin).status_code == 204
    r = client.get(f"/v1/flavors/{flavor['id']}", headers=admin)
    assert (r.status_code, r.json()["code"]) == (404, "flavor_not_found")


def test_default_flavors_are_listed_for_everyone(client: TestClient,
                                                  admin: dict[str, str]) -> None:
    member = make_account(client, admin)
    names = {f["name"] for f in client.get("/v1/flavors", headers=member.headers).json()}
    assert {"tiny", "small", "medium", "large"} <= names


def test_duplicate_name_is_409(client: TestClient, admin: dict[str, str]) -> None:
    flavor = make_flavor(client, admin)
    r = client.post("/v1/flavors", json={"name": flavor["name"], "vcpus": 1, "ram_mb": 512,
                                         "disk_gb": 1}, headers=admin)
    assert (r.status_code, r.json()["code"]) == (409, "flavor_exists")


def test_members_and_readers_cannot_manage_flavors(client: TestClient,
                                                    admin: dict[str, str]) -> None:
    flavor = make_flavor(client, admin, is_public=False)
    for role in ("member", "reader"):
        acct = make_account(client, admin, role=role)
        h = acct.headers
        attempts = [
            client.post("/v1/flavors", json={"name": unique("f"), "vcpus": 1, "ram_mb": 512,
                                             "disk_gb": 1}, headers=h),
            client.delete(f"/v1/flavors/{flavor['id']}", headers=h),
            client.post(f"/v1/flavors/{flavor['id']}/access/{acct.project_id}", headers=h),
            client.delete(f"/v1/flavors/{flavor['id']}/access/{acct.project_id}", headers=h),
        ]
        for r in attempts:
            assert (r.status_code, r.json()["code"]) == (403, "admin_required"), r.text
    assert client.get(f"/v1/flavors/{flavor['id']}", headers=admin).status_code == 200


def test_private_flavor_is_visible_only_to_projects_it_is_shared_with(
    client: TestClient, admin: dict[str, str]
) -> None:
    flavor = make_flavor(client, admin, is_public=False)
    a = make_account(client, admin)
    b = make_account(client, admin, role="reader")
    for acct in (a, b):
        assert flavor["id"] not in ids(client.get("/v1/flavors", headers=acct.headers).json())
        for ref in (flavor["id"], flavor["name"]):
            r = client.get(f"/v1/flavors/{ref}", headers=acct.headers)
            assert (r.status_code, r.json()["code"]) == (404, "flavor_not_found")
    assert flavor["id"] in ids(client.get("/v1/flavors", headers=admin).json())

    r = client.post(f"/v1/flavors/{flavor['id']}/access/{a.project_id}", headers=admin)
    assert r.status_code == 200
    assert r.json() == {"flavor_id": flavor["id"], "projects": [a.project_id]}
    # Sharing twice is a no-op.
    again = client.post(f"/v1/flavors/{flavor['name']}/access/{a.project_id}", headers=admin)
    assert again.json() == r.json()
    assert flavor["id"] in ids(client.get("/v1/flavors", headers=a.headers).json())
    assert client.get(f"/v1/flavors/{flavor['name']}", headers=a.headers).status_code == 200
    assert flavor["id"] not in ids(client.get("/v1/flavors", headers=b.headers).json())

    r = client.delete(f"/v1/flavors/{flavor['id']}/access/{a.project_id}", headers=admin)
    assert r.json()["projects"] == []
    assert client.get(f"/v1/flavors/{flavor['id']}", headers=a.headers).status_code == 404
    r = client.delete(f"/v1/flavors/{flavor['id']}/access/{a.project_id}", headers=admin)
    assert (r.status_code, r.json()["code"]) == (404, "access_not_found")


def test_sharing_needs_a_private_flavor_and_a_real_project(
    client: TestClient, admin: dict[str, str]
) -> None:
    public = make_flavor(client, admin)
    private = make_flavor(client, admin, is_public=False)
    acct = make_account(client, admin)
    r = client.post(f"/v1/flavors/{public['id']}/access/{acct.project_id}", headers=admin)
    assert (r.status_code, r.json()["code"]) == (409, "flavor_is_public")
    r = client.post(f"/v1/flavors/{private['id']}/access/no-such-project", headers=admin)
    assert (r.status_code, r.json()["code"]) == (404, "project_not_found")


def test_flavor_in_use_by_a_live_server_is_409_then_a_tombstone(
    client: TestClient, admin: dict[str, str], database_url: str
) -> None:
    acct = make_account(client, admin)
    flavor = make_flavor(client, admin)
    image = make_image(client, acct.headers)
    server_id = insert_server_row(database_url, acct.project_id, acct.user_id, flavor, image["id"])
    r = client.delete(f"/v1/flavors/{flavor['id']}", headers=admin)
    assert (r.status_code, r.json()["code"]) == (409, "flavor_in_use")
    soft_delete_server_row(database_url, server_id)
    assert client.delete(f"/v1/flavors/{flavor['id']}", headers=admin).status_code == 204
    assert client.get(f"/v1/flavors/{flavor['id']}", headers=admin).status_code == 404
    assert flavor["id"] not in ids(client.get("/v1/flavors", headers=admin).json())
    # The name is free again.
    make_flavor(client, admin, name=flavor["name"])


@pytest.mark.parametrize("change", [
    {"vcpus": 0}, {"vcpus": 1025}, {"vcpus": "two"}, {"vcpus": 1.5}, {"vcpus": None},
    {"ram_mb": 63}, {"ram_mb": 16 * 1024 * 1024 + 1}, {"ram_mb": -1},
    {"disk_gb": -1}, {"disk_gb": 100_001}, {"disk_gb": 10**30},
    {"name": "x" * 10_000}, {"name": "bad\x00name"}, {"name": "tab\tname"}, {"name": ""},
    {"is_public": "maybe"}, {"extra_specs": ["ssd"]}, {"extra_specs": {"ssd": 1}},
    {"extra_specs": {"bad key": "x"}}, {"extra_specs": {"k": "v\x07"}},
    {"extra_specs": {"k": "v" * 256}}, {"extra_specs": {f"k{i}": "v" for i in range(33)}},
    {"unknown": 1},
])
def test_bad_flavor_input_is_a_422_problem(client: TestClient, admin: dict[str, str],
                                           change: dict[str, Any]) -> None:
    body = {"name": unique("f"), "vcpus": 1, "ram_mb": 512, "disk_gb": 1} | change
    r = client.post("/v1/flavors", json=body, headers=admin)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "invalid_input"
    names = {f["name"] for f in client.get("/v1/flavors", headers=admin).json()}
    assert body["name"] not in names
