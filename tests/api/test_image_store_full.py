"""A full image store: the upload is 507 and keeps nothing, /readyz says so, writes go on.

The image store is a real 2 MiB tmpfs mounted for the test (needs root), used by a real API
process; nothing about the disk is mocked.
"""

from __future__ import annotations

import os
import subprocess
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from api.config import Settings
from tests.conftest import start_live_apis, stop_live_api
from tests.factories import IMAGE_BYTES, make_account, unique

MIN_FREE = 256 * 1024  # the API process's MINICLOUD_IMAGE_STORE_MIN_FREE_BYTES

pytestmark = pytest.mark.skipif(os.geteuid() != 0, reason="mounting a tmpfs needs root")


@pytest.fixture
def tiny_store_api(settings: Settings, client: TestClient,
                   tmp_path: Path) -> Iterator[tuple[str, Path]]:
    """A real API process on the test database whose image store is a 2 MiB tmpfs."""
    data = tmp_path / "data"
    images = data / "images"
    images.mkdir(parents=True)
    subprocess.run(["mount", "-t", "tmpfs", "-o", "size=2m", "tmpfs", str(images)], check=True)
    url = start_live_apis(settings, 1, data_dir=data,
                          MINICLOUD_IMAGE_STORE_MIN_FREE_BYTES=str(MIN_FREE))[0]
    try:
        yield url, images
    finally:
        stop_live_api(url)
        subprocess.run(["umount", str(images)], check=True)


def test_disk_full_is_507_keeps_nothing_and_readyz_reports_it(
        client: TestClient, admin: dict[str, str],
        tiny_store_api: tuple[str, Path]) -> None:
    url, images = tiny_store_api
    acct = make_account(client, admin)
    with httpx.Client(base_url=url, headers=acct.headers, timeout=30) as c:
        assert c.get("/readyz").status_code == 200
        r = c.post("/v1/images", json={"name": unique("big"), "disk_format": "raw"})
        assert r.status_code == 201, r.text
        big = r.json()["id"]
        data = IMAGE_BYTES["raw"] + b"\x00" * (3 * 1024 * 1024)  # more than the disk
        r = c.put(f"/v1/images/{big}/file", content=data)
        assert r.status_code == 507, r.text
        assert r.headers["content-type"].startswith("application/problem+json")
        assert r.json()["code"] == "insufficient_storage"
        shown = c.get(f"/v1/images/{big}").json()
        assert (shown["status"], shown["size"]) == ("queued", None)
        assert list(images.iterdir()) == []  # the partial file is gone

        # Writes still work: a small image uploads, and the big one may be retried.
        r = c.post("/v1/images", json={"name": unique("small"), "disk_format": "raw"})
        small = r.json()["id"]
        r = c.put(f"/v1/images/{small}/file", content=IMAGE_BYTES["raw"])
        assert r.status_code == 200, r.text
        assert c.post("/v1/servers", json={}).status_code == 422  # the API still answers

        # Fill the disk from outside: /readyz says the image store is out of space, and
        # nothing more (no path, no sizes).
        filler = images / "filler"
        with open(filler, "wb") as f, pytest.raises(OSError):
            while True:
                f.write(b"\x00" * 65536)
                f.flush()
        r = c.get("/readyz")
        assert r.status_code == 503, r.text
        body = r.json()
        assert body["code"] == "image_store_full"
        assert str(images) not in r.text and "tmpfs" not in r.text
        r = c.post("/v1/images", json={"name": unique("more"), "disk_format": "raw"})
        more = r.json()["id"]
        r = c.put(f"/v1/images/{more}/file", content=IMAGE_BYTES["raw"] * 64)
        assert (r.status_code, r.json()["code"]) == (507, "insufficient_storage")
        filler.unlink()
        assert c.get("/readyz").status_code == 200
        r = c.put(f"/v1/images/{more}/file", content=IMAGE_BYTES["raw"] * 64)
        assert r.status_code == 200, r.text
