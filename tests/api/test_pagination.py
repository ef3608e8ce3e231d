"""Every list that can grow comes in pages: `limit` + `marker`, a plain JSON array, and a
`Link: <...>; rel="next"` header while more follow."""

from __future__ import annotations

import random
from collections.abc import Callable
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient

from api.db import utcnow
from api.usage.meters import PRICE_KEYS
from tests.factories import (
    Account,
    insert_host_row,
    make_account,
    make_flavor,
    make_project,
    unique,
)

UNKNOWN = "00000000-0000-0000-0000-000000000000"

Maker = Callable[[TestClient, dict[str, str], Account, str], None]


def _project(client: TestClient, admin: dict[str, str], _: Account, __: str) -> None:
    make_project(client, admin)


def _user(client: TestClient, admin: dict[str, str], _: Account, __: str) -> None:
    make_account(client, admin)


def _credential(client: TestClient, _: dict[str, str], acct: Account, __: str) -> None:
    r = client.post("/v1/application-credentials", json={"name": unique("cred")},
                    headers=acct.headers)
    assert r.status_code == 201, r.text


def _host(_: TestClient, __: dict[str, str], ___: Account, database_url: str) -> None:
    insert_host_row(database_url)


def _flavor(client: TestClient, admin: dict[str, str], _: Account, __: str) -> None:
    make_flavor(client, admin, vcpus=random.randint(1, 64))


def _rate_card(client: TestClient, admin: dict[str, str], _: Account, __: str) -> None:
    when = utcnow() + timedelta(days=random.randint(1000, 30000), seconds=random.randint(0, 86399))
    body = {"valid_from": when.replace(microsecond=0).isoformat(), "currency": "EUR",
            **{key: "0.01" for key in PRICE_KEYS}}
    r = client.post("/v1/rates", json=body, headers=admin)
    assert r.status_code == 201, r.text


def _keypair(client: TestClient, _: dict[str, str], acct: Account, __: str) -> None:
    # Names with blanks and '&' must survive the round trip through the Link header.
    r = client.post("/v1/keypairs", json={"name": unique("key & pair")}, headers=acct.headers)
    assert r.status_code == 201, r.text


def _server_group(client: TestClient, _: dict[str, str], acct: Account, __: str) -> None:
    r = client.post("/v1/server-groups", json={"name": unique("group"), "policy": "affinity"},
                    headers=acct.headers)
    assert r.status_code == 201, r.text


# (route, who lists it, how to add one more row, the array's key in the body, the marker field)
ROUTES: list[tuple[str, str, Maker, str | None, str]] = [
    ("/v1/projects", "admin", _project, None, "id"),
    ("/v1/users", "admin", _user, None, "id"),
    ("/v1/application-credentials", "member", _credential, None, "id"),
    ("/v1/hosts", "admin", _host, None, "id"),
    ("/v1/flavors", "member", _flavor, None, "id"),
    ("/v1/rates", "member", _rate_card, None, "id"),
    ("/v1/keypairs", "member", _keypair, "keypairs", "name"),
    ("/v1/server-groups", "member", _server_group, "server_groups", "id"),
]


def _items(body: Any, key: str | None) -> list[dict[str, Any]]:
    items = body if key is None else body[key]
    assert isinstance(items, list)
    return items


@pytest.mark.parametrize("path, viewer, make, key, field", ROUTES, ids=[r[0] for r in ROUTES])
def test_a_listing_comes_back_completely_page_by_page(
        client: TestClient, admin: dict[str, str], database_url: str,
        path: str, viewer: str, make: Maker, key: str | None, field: str) -> None:
    acct = make_account(client, admin)
    headers = admin if viewer == "admin" else acct.headers
    for _ in range(5):
        make(client, admin, acct, database_url)
    r = client.get(path, headers=headers)
    assert r.status_code == 200, r.text
    assert "link" not in r.headers  # the default page holds everything here
    everything = [o[field] for o in _items(r.json(), key)]
    assert len(everything) >= 5
    seen: list[str] = []
    url: str | None = f"{path}?limit=2"
    pages = 0
    while url is not None:
        r = client.get(url, headers=headers)
        assert r.status_code == 200, r.text
        assert len(_items(r.json(), key)) <= 2
        seen += [o[field] for o in _items(r.json(), key)]
        pages += 1
        url = r.links.get("next", {}).get("url")
    assert pages >= 3
    assert len(seen) == len(set(seen))
    assert seen == everything
    r = client.get(path, headers=headers, params={"limit": 2, "marker": UNKNOWN})
    assert (r.status_code, r.json()["code"]) == (400, "invalid_marker")


def test_a_marker_from_another_tenant_is_an_invalid_marker(
        client: TestClient, admin: dict[str, str]) -> None:
    mine, theirs = make_account(client, admin), make_account(client, admin)
    r = client.post("/v1/application-credentials", json={"name": unique("cred")},
                    headers=theirs.headers)
    assert r.status_code == 201, r.text
    r2 = client.post("/v1/server-groups", json={"name": unique("group"), "policy": "affinity"},
                     headers=theirs.headers)
    assert r2.status_code == 201, r2.text
    for path, marker in [("/v1/projects", theirs.project_id),
                         ("/v1/application-credentials", r.json()["id"]),
                         ("/v1/server-groups", r2.json()["id"])]:
        r = client.get(path, headers=mine.headers, params={"marker": marker})
        assert (r.status_code, r.json()["code"]) == (400, "invalid_marker"), path
    r = client.get("/v1/projects", headers=mine.headers, params={"marker": mine.project_id})
    assert (r.status_code, r.json()) == (200, [])
