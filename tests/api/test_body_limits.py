"""Request bodies over the cap are refused (413) before any route parses them."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator

import httpx
from fastapi.testclient import TestClient

from tests.factories import make_account, unique

CAP = 1024 * 1024  # Settings.max_request_body_bytes' default


def _image_body(name: str, size: int) -> bytes:
    # Valid JSON padded with whitespace: parsed, it would create the image.
    body = json.dumps({"name": name, "disk_format": "raw"}).encode()
    return body[:-1] + b" " * (size - len(body)) + b"}"


def _names(c: httpx.Client, headers: dict[str, str]) -> set[str]:
    r = c.get("/v1/images", headers=headers)
    assert r.status_code == 200, r.text
    return {i["name"] for i in r.json()}


def _assert_too_large(r: httpx.Response) -> None:
    assert r.status_code == 413, r.text
    assert r.headers["content-type"].startswith("application/problem+json")
    assert r.json()["code"] == "payload_too_large"


def test_oversized_json_and_chunked_bodies_are_refused_and_nothing_is_written(
        client: TestClient, admin: dict[str, str],
        live_api: Callable[[int], list[str]]) -> None:
    url = live_api(1)[0]
    acct = make_account(client, admin)
    headers = acct.headers | {"Content-Type": "application/json"}
    with httpx.Client(base_url=url, timeout=30) as c:
        # Declared length over the cap.
        big = unique("big")
        _assert_too_large(c.post("/v1/images", content=_image_body(big, CAP + 1),
                                 headers=headers))

        # Chunked, without a length: counted while it streams.
        chunked = unique("chunked")
        body = _image_body(chunked, 3 * CAP)

        def stream() -> Iterator[bytes]:
            for i in range(0, len(body), 64 * 1024):
                yield body[i:i + 64 * 1024]

        _assert_too_large(c.post("/v1/images", content=stream(), headers=headers))
        assert not {big, chunked} & _names(c, acct.headers)

        # Just under the cap, either way, the same bodies are accepted.
        fits = unique("fits")
        r = c.post("/v1/images", content=_image_body(fits, CAP), headers=headers)
        assert r.status_code == 201, r.text
        small = _image_body(unique("chunk-fits"), CAP)
        r = c.post("/v1/images", content=iter([small[:CAP // 2], small[CAP // 2:]]),
                   headers=headers)
        assert r.status_code == 201, r.text
        assert fits in _names(c, acct.headers)


def test_image_upload_streams_past_the_body_cap(
        client: TestClient, admin: dict[str, str],
        live_api: Callable[[int], list[str]]) -> None:
    url = live_api(1)[0]
    acct = make_account(client, admin)
    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.post("/v1/images", json={"name": unique("large"), "disk_format": "raw"},
                   headers=acct.headers)
        assert r.status_code == 201, r.text
        data = b"\x00" * (3 * CAP)
        r = c.put(f"/v1/images/{r.json()['id']}/file", content=data, headers=acct.headers)
        assert r.status_code == 200, r.text
        assert r.json()["size"] == len(data)


def test_the_openstack_layer_refuses_oversized_bodies_in_its_own_error_shape(
        client: TestClient, admin: dict[str, str],
        live_api: Callable[[int], list[str]]) -> None:
    url = live_api(1)[0]
    acct = make_account(client, admin)
    os_headers = {"X-Auth-Token": acct.token, "Content-Type": "application/json"}
    padded = b'{"server": {"name": "x"}' + b" " * (CAP + 1) + b"}"
    with httpx.Client(base_url=url, timeout=30) as c:
        # Nova's other errors: {"<fault>": {"code", "message"}}; 413 is its "overLimit".
        other = c.get("/compute/v2.1/servers/00000000-0000-0000-0000-000000000000",
                      headers=os_headers)
        assert other.status_code == 404 and set(other.json()["itemNotFound"]) == {
            "code", "message"}
        for body in (padded, iter([padded[:CAP], padded[CAP:]])):  # declared, chunked
            r = c.post("/compute/v2.1/servers", content=body, headers=os_headers)
            assert r.status_code == 413, r.text
            assert r.headers["content-type"] == "application/json"
            assert set(r.json()) == {"overLimit"}, r.json()
            assert r.json()["overLimit"]["code"] == 413
            assert str(CAP) in r.json()["overLimit"]["message"]

        # Glance's other errors: {"error": {"code", "title", "message"}}.
        other = c.get("/image/v2/images/00000000-0000-0000-0000-000000000000",
                      headers=os_headers)
        assert other.status_code == 404 and set(other.json()["error"]) == {
            "code", "title", "message"}
        name = unique("os-big")
        big = _image_body(name, CAP + 1)
        for body in (big, iter([big[:CAP], big[CAP:]])):
            r = c.post("/image/v2/images", content=body, headers=os_headers)
            assert r.status_code == 413, r.text
            assert r.headers["content-type"] == "application/json"
            assert r.json() == {"error": {"code": 413, "title": "Request Entity Too Large",
                                          "message": r.json()["error"]["message"]}}
            assert str(CAP) in r.json()["error"]["message"]
        assert name not in _names(c, acct.headers)
