"""Image quotas: how many images a project holds, and their bytes together."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
from fastapi.testclient import TestClient

from api.config import Settings
from tests.factories import IMAGE_BYTES, Account, make_account, unique


def _quota_exceeded(r: httpx.Response, resource: str, requested: int, used: int,
                    limit: int) -> None:
    assert r.status_code == 409, r.text
    body = r.json()
    assert body["code"] == "quota_exceeded"
    assert (body["resource"], body["requested"], body["used"], body["limit"]) == (
        resource, requested, used, limit)


def _set(client: TestClient, admin: dict[str, str], acct: Account, **limits: int) -> None:
    r = client.put(f"/v1/quotas/{acct.project_id}", json=limits, headers=admin)
    assert r.status_code == 200, r.text
    for key, value in limits.items():
        assert r.json()["limits"][key] == value


def _image(client: TestClient, acct: Account) -> dict[str, Any]:
    r = client.post("/v1/images", json={"name": unique("img"), "disk_format": "raw"},
                    headers=acct.headers)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def _files_of(settings: Settings, image_id: str) -> list[Path]:
    return [p for p in settings.image_dir.glob("*") if image_id in p.name]


def test_creating_an_image_over_the_count_is_409_and_writes_nothing(
        client: TestClient, admin: dict[str, str]) -> None:
    acct = make_account(client, admin)
    _set(client, admin, acct, images=2)
    _image(client, acct)
    _image(client, acct)
    r = client.post("/v1/images", json={"name": unique("img"), "disk_format": "raw"},
                    headers=acct.headers)
    _quota_exceeded(r, "images", 1, 2, 2)
    # The OpenStack Image API counts against the same quota (its shape: 403, as for Nova).
    os_r = client.post("/image/v2/images", headers={"X-Auth-Token": acct.token},
                       json={"name": unique("img"), "disk_format": "raw",
                             "container_format": "bare"})
    assert os_r.status_code == 403, os_r.text
    assert "Quota exceeded for images" in os_r.json()["error"]["message"]
    mine = [i for i in client.get("/v1/images", headers=acct.headers).json()
            if i["project_id"] == acct.project_id]
    assert len(mine) == 2
    q = client.get(f"/v1/quotas/{acct.project_id}", headers=acct.headers).json()
    assert (q["usage"]["images"], q["limits"]["images"]) == (2, 2)


def test_uploads_over_the_bytes_quota_are_409_and_keep_nothing(
        client: TestClient, admin: dict[str, str], settings: Settings) -> None:
    acct = make_account(client, admin)
    first = IMAGE_BYTES["raw"] + b"\x00" * (8192 - len(IMAGE_BYTES["raw"]))
    _set(client, admin, acct, image_bytes=10_000)
    a = _image(client, acct)
    r = client.put(f"/v1/images/{a['id']}/file", content=first, headers=acct.headers)
    assert r.status_code == 200, r.text

    b = _image(client, acct)
    data = IMAGE_BYTES["raw"] + b"\x00" * 4096
    # Declared length over the room left: refused before any byte is stored.
    r = client.put(f"/v1/images/{b['id']}/file", content=data, headers=acct.headers)
    _quota_exceeded(r, "image_bytes", len(data), 8192, 10_000)
    # No length declared: refused while streaming, once the bytes pass the room left.
    chunks = [data[i:i + 1024] for i in range(0, len(data), 1024)]
    r = client.put(f"/v1/images/{b['id']}/file", content=iter(chunks), headers=acct.headers)
    assert r.status_code == 409, r.text
    assert (r.json()["code"], r.json()["resource"]) == ("quota_exceeded", "image_bytes")
    shown = client.get(f"/v1/images/{b['id']}", headers=acct.headers).json()
    assert (shown["status"], shown["size"]) == ("queued", None)
    assert _files_of(settings, b["id"]) == []
    q = client.get(f"/v1/quotas/{acct.project_id}", headers=acct.headers).json()
    assert q["usage"]["image_bytes"] == 8192

    # Room again: the same upload goes through.
    _set(client, admin, acct, image_bytes=8192 + len(data))
    r = client.put(f"/v1/images/{b['id']}/file", content=iter(chunks), headers=acct.headers)
    assert r.status_code == 200, r.text
    assert r.json()["size"] == len(data)
    q = client.get(f"/v1/quotas/{acct.project_id}", headers=acct.headers).json()
    assert q["usage"]["image_bytes"] == 8192 + len(data)
    # Deleting an image gives its bytes back.
    assert client.delete(f"/v1/images/{a['id']}", headers=acct.headers).status_code == 204
    q = client.get(f"/v1/quotas/{acct.project_id}", headers=acct.headers).json()
    assert (q["usage"]["images"], q["usage"]["image_bytes"]) == (1, len(data))


def test_images_are_listed_completely_page_by_page(
        client: TestClient, admin: dict[str, str]) -> None:
    acct = make_account(client, admin)
    for _ in range(7):
        _image(client, acct)
    everything = [i["id"] for i in client.get("/v1/images", headers=acct.headers).json()]
    assert len(everything) >= 7
    seen: list[str] = []
    url: str | None = "/v1/images?limit=2"
    pages = 0
    while url is not None:
        r = client.get(url, headers=acct.headers)
        assert r.status_code == 200, r.text
        assert len(r.json()) <= 2
        seen += [i["id"] for i in r.json()]
        pages += 1
        url = r.links.get("next", {}).get("url")
    assert pages >= 4
    assert len(seen) == len(set(seen))
    assert seen == everything
    r = client.get("/v1/images", headers=acct.headers,
                   params={"marker": "00000000-0000-0000-0000-000000000000"})
    assert (r.status_code, r.json()["code"]) == (400, "invalid_marker")
