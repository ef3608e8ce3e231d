"""Quotas through HTTP: live usage, limits, admin-only updates, enforcement."""

from __future__ import annotations

from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.config import Settings
from tests.agent_factories import observe
from tests.api.test_servers import boot, problem, server_ids
from tests.catalog_rows import make_image_row
from tests.factories import make_account

# Servers created through the API need a host to be placed on.
pytestmark = pytest.mark.usefixtures("pool")

ZERO = {"instances": 0, "vcpus": 0, "ram_mb": 0, "disk_gb": 0, "images": 0, "image_bytes": 0}


def quota(client: TestClient, headers: dict[str, str], project_id: str) -> dict[str, Any]:
    r = client.get(f"/v1/quotas/{project_id}", headers=headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def test_a_new_project_has_the_configured_defaults_and_no_usage(
    client: TestClient, admin: dict[str, str], settings: Settings
) -> None:
    acct = make_account(client, admin)
    body = quota(client, acct.headers, acct.project_id)
    assert body == {"project_id": acct.project_id, "usage": ZERO, "limits": {
        "instances": settings.default_quota_instances, "vcpus": settings.default_quota_vcpus,
        "ram_mb": settings.default_quota_ram_mb, "disk_gb": settings.default_quota_disk_gb,
        "images": settings.default_quota_images,
        "image_bytes": settings.default_quota_image_bytes}}


def test_usage_is_exact_and_follows_creates_and_deletes(
    client: TestClient, admin: dict[str, str], database_url: str, pool: dict[str, str]
) -> None:
    acct = make_account(client, admin)
    boot(client, acct, database_url, flavor="tiny")  # 1 vcpu, 512 MB, 1 GB
    small = boot(client, acct, database_url, flavor="small")  # 1, 2048, 20
    boot(client, acct, database_url, flavor="medium")  # 2, 4096, 40
    # Each boot() also made an image of 1024 bytes in the project.
    images = {"images": 3, "image_bytes": 3 * 1024}
    assert quota(client, acct.headers, acct.project_id)["usage"] == {
        "instances": 3, "vcpus": 4, "ram_mb": 512 + 2048 + 4096, "disk_gb": 1 + 20 + 40,
        **images}
    client.delete(f"/v1/servers/{small['id']}", headers=acct.headers)
    # DELETING still holds its resources until the agent confirms the domain is gone.
    assert quota(client, acct.headers, acct.project_id)["usage"]["instances"] == 3
    observe(client, pool, small["id"], "absent")
    assert quota(client, acct.headers, acct.project_id)["usage"] == {
        "instances": 2, "vcpus": 3, "ram_mb": 512 + 4096, "disk_gb": 41, **images}
    # Admins read any project's quota and see the same numbers.
    assert quota(client, admin, acct.project_id)["usage"]["instances"] == 2


def test_over_quota_is_409_naming_the_resource_and_writes_nothing(
    client: TestClient, admin: dict[str, str], database_url: str
) -> None:
    acct = make_account(client, admin)
    r = client.put(f"/v1/quotas/{acct.project_id}", json={"instances": 1, "vcpus": 3},
                   headers=admin)
    assert r.status_code == 200, r.text
    first = boot(client, acct, database_url, flavor="medium")["id"]  # 2 vcpus of 3
    body = {"name": "second", "flavor": "tiny",
            "image": make_image_row(database_url, acct.project_id)}
    p = problem(client.post("/v1/servers", json=body, headers=acct.headers),
                409, "quota_exceeded")
    assert (p["resource"], p["requested"], p["used"], p["limit"]) == ("instances", 1, 1, 1)
    assert "instances" in p["detail"]
    client.put(f"/v1/quotas/{acct.project_id}", json={"instances": 5}, headers=admin)
    body["flavor"] = "medium"
    p = problem(client.post("/v1/servers", json=body, headers=acct.headers),
                409, "quota_exceeded")
    assert (p["resource"], p["requested"], p["used"], p["limit"]) == ("vcpus", 2, 2, 3)
    assert server_ids(client, acct) == [first]
    assert quota(client, acct.headers, acct.project_id)["usage"]["instances"] == 1


def test_usage_freed_between_two_creates_counts_for_the_second(
    client: TestClient, admin: dict[str, str], database_url: str, pool: dict[str, str]
) -> None:
    # Back-to-back creates of one project may be checked against what the previous check
    # left; a confirmed delete in between (it does not lock the project) must still count,
    # and a refusal must name the live usage.
    acct = make_account(client, admin)
    r = client.put(f"/v1/quotas/{acct.project_id}", json={"vcpus": 4}, headers=admin)
    assert r.status_code == 200, r.text
    first = boot(client, acct, database_url, flavor="medium")  # 2 vcpus of 4
    second = boot(client, acct, database_url, flavor="medium")  # 4 of 4
    assert client.delete(f"/v1/servers/{first['id']}", headers=acct.headers).status_code == 202
    observe(client, pool, first["id"], "absent")  # 2 of 4
    image = make_image_row(database_url, acct.project_id)
    p = problem(client.post("/v1/servers", json={"name": "big", "flavor": "large",
                                                 "image": image}, headers=acct.headers),
                409, "quota_exceeded")
    assert (p["resource"], p["requested"], p["used"], p["limit"]) == ("vcpus", 4, 2, 4)
    third = boot(client, acct, database_url, flavor="medium")  # 4 of 4: fits the live usage
    assert sorted(server_ids(client, acct)) == sorted([second["id"], third["id"]])
    assert quota(client, acct.headers, acct.project_id)["usage"]["vcpus"] == 4
    p = problem(client.post("/v1/servers", json={"name": "more", "flavor": "tiny",
                                                 "image": image}, headers=acct.headers),
                409, "quota_exceeded")
    assert (p["resource"], p["used"], p["limit"]) == ("vcpus", 4, 4)


def test_limits_may_drop_below_usage_and_then_creates_fail(
    client: TestClient, admin: dict[str, str], database_url: str
) -> None:
    acct = make_account(client, admin)
    boot(client, acct, database_url)
    boot(client, acct, database_url)
    r = client.put(f"/v1/quotas/{acct.project_id}", json={"instances": 1}, headers=admin)
    assert r.status_code == 200
    assert (r.json()["limits"]["instances"], r.json()["usage"]["instances"]) == (1, 2)
    assert len(server_ids(client, acct)) == 2  # nothing running is touched
    image = make_image_row(database_url, acct.project_id)
    problem(client.post("/v1/servers", json={"name": "x", "flavor": "tiny", "image": image},
                        headers=acct.headers), 409, "quota_exceeded")


def test_put_changes_only_the_given_limits(
    client: TestClient, admin: dict[str, str], settings: Settings
) -> None:
    acct = make_account(client, admin)
    r = client.put(f"/v1/quotas/{acct.project_id}", json={"ram_mb": 1024}, headers=admin)
    assert r.json()["limits"] == {"instances": settings.default_quota_instances,
                                  "vcpus": settings.default_quota_vcpus, "ram_mb": 1024,
                                  "disk_gb": settings.default_quota_disk_gb,
                                  "images": settings.default_quota_images,
                                  "image_bytes": settings.default_quota_image_bytes}
    r = client.put(f"/v1/quotas/{acct.project_id}", json={"vcpus": 0, "ram_mb": 2048},
                   headers=admin)
    assert (r.json()["limits"]["vcpus"], r.json()["limits"]["ram_mb"]) == (0, 2048)
    assert quota(client, acct.headers, acct.project_id)["limits"] == r.json()["limits"]


def test_bad_quota_updates_are_4xx_and_change_nothing(
    client: TestClient, admin: dict[str, str]
) -> None:
    acct = make_account(client, admin)
    before = quota(client, admin, acct.project_id)
    for body in ({"instances": -1}, {"vcpus": 10**12}, {"ram_mb": "5"}, {"disk_gb": 1.5},
                 {"instances": None, "cores": 3}, {"instances": True}, [1]):
        problem(client.put(f"/v1/quotas/{acct.project_id}", json=body, headers=admin),
                422, "invalid_input")
    r = client.put(f"/v1/quotas/{acct.project_id}", content=b"{",
                   headers={**admin, "Content-Type": "application/json"})
    problem(r, 400, "malformed_json")
    problem(client.put("/v1/quotas/no-such-project", json={"instances": 1}, headers=admin),
            404, "project_not_found")
    assert quota(client, admin, acct.project_id) == before


def test_only_admins_set_quotas_and_projects_see_only_their_own(
    client: TestClient, admin: dict[str, str]
) -> None:
    member = make_account(client, admin)
    reader = make_account(client, admin, role="reader", project_id=member.project_id)
    other = make_account(client, admin)
    for acct in (member, reader):
        problem(client.put(f"/v1/quotas/{member.project_id}", json={"instances": 100},
                           headers=acct.headers), 403, "admin_required")
    assert quota(client, reader.headers, member.project_id)["limits"]["instances"] != 100
    problem(client.get(f"/v1/quotas/{member.project_id}", headers=other.headers),
            404, "project_not_found")
    problem(client.get("/v1/quotas/no-such-project", headers=member.headers),
            404, "project_not_found")
