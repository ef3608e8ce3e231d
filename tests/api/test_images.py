"""Images through HTTP: records, streamed uploads checked against their format, downloads,
visibility between projects, roles, and the memory of a 2 GiB upload."""

from __future__ import annotations

import hashlib
import os
import threading
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from api.config import Settings
from api.main import create_app
from tests.factories import (
    IMAGE_BYTES,
    bearer,
    insert_host_row,
    insert_server_row,
    make_account,
    make_flavor,
    make_image,
    soft_delete_server_row,
    unique,
)

QCOW2 = IMAGE_BYTES["qcow2"]
RAW = IMAGE_BYTES["raw"]
KERNEL = IMAGE_BYTES["aki"]
RAMDISK = IMAGE_BYTES["ari"]


def create(client: TestClient, headers: dict[str, str], **fields: Any) -> dict[str, Any]:
    """A queued image record."""
    body = {"name": unique("image"), "disk_format": "raw"} | fields
    r = client.post("/v1/images", json=body, headers=headers)
    assert r.status_code == 201, r.text
    image: dict[str, Any] = r.json()
    return image


def files_of(image_dir: Path, image_id: str) -> list[str]:
    """Every file in the store that belongs to the image (final or temporary)."""
    if not image_dir.exists():
        return []
    return sorted(p.name for p in image_dir.iterdir() if image_id in p.name)


def test_create_upload_download_round_trip(client: TestClient, admin: dict[str, str],
                                           settings: Settings) -> None:
    acct = make_account(client, admin)
    data = os.urandom(3 * 1024 * 1024 + 17)  # spans several write batches
    image = create(client, acct.headers, min_disk=1, min_ram=256,
                   properties={"architecture": "x86_64"})
    assert image["status"] == "queued"
    assert (image["size"], image["sha256"]) == (None, None)
    assert image["project_id"] == acct.project_id
    assert image["visibility"] == "private"

    r = client.put(f"/v1/images/{image['id']}/file", content=data, headers=acct.headers)
    assert r.status_code == 200, r.text
    done = r.json()
    assert done["status"] == "active"
    assert done["size"] == len(data)
    assert done["sha256"] == hashlib.sha256(data).hexdigest()
    assert files_of(settings.image_dir, image["id"]) == [image["id"]]

    r = client.get(f"/v1/images/{image['id']}/file", headers=acct.headers)
    assert r.status_code == 200
    assert r.content == data
    assert r.headers["content-length"] == str(len(data))
    assert r.headers["x-image-sha256"] == done["sha256"]
    assert client.get(f"/v1/images/{image['id']}", headers=acct.headers).json() == done
    assert image["id"] in {i["id"] for i in
                           client.get("/v1/images", headers=acct.headers).json()}


def test_upload_of_a_chunked_body_streams(client: TestClient, admin: dict[str, str]) -> None:
    acct = make_account(client, admin)
    image = create(client, acct.headers, disk_format="qcow2")
    parts = [QCOW2[:3], QCOW2[3:100], os.urandom(2_000_000)]

    def body() -> Iterator[bytes]:
        yield from parts

    r = client.put(f"/v1/images/{image['id']}/file", content=body(), headers=acct.headers)
    assert r.status_code == 200, r.text
    assert r.json()["sha256"] == hashlib.sha256(b"".join(parts)).hexdigest()


def test_a_second_upload_is_409(client: TestClient, admin: dict[str, str]) -> None:
    acct = make_account(client, admin)
    image = make_image(client, acct.headers)
    r = client.put(f"/v1/images/{image['id']}/file", content=RAW, headers=acct.headers)
    assert (r.status_code, r.json()["code"]) == (409, "image_not_queued")
    assert client.get(f"/v1/images/{image['id']}", headers=acct.headers).json() == image


def test_download_before_upload_is_409(client: TestClient, admin: dict[str, str]) -> None:
    acct = make_account(client, admin)
    image = create(client, acct.headers)
    r = client.get(f"/v1/images/{image['id']}/file", headers=acct.headers)
    assert (r.status_code, r.json()["code"]) == (409, "image_not_active")


QCOW2_WITH_BACKING_FILE = b"QFI\xfb\x00\x00\x00\x03" + (512).to_bytes(8, "big") + b"\x00" * 600
QCOW2_WITH_DATA_FILE = (b"QFI\xfb\x00\x00\x00\x03" + b"\x00" * 64
                        + (4).to_bytes(8, "big") + b"\x00" * 600)


@pytest.mark.parametrize(("disk_format", "data"), [
    pytest.param("qcow2", RAW, id="qcow2-declared-raw-bytes"),
    pytest.param("raw", QCOW2, id="raw-declared-qcow2-bytes"),
    pytest.param("raw", b"KDMV" + b"\x00" * 5000, id="raw-declared-vmdk-bytes"),
    pytest.param("raw", b"<<< Oracle VM VirtualBox Disk Image >>>\n", id="raw-declared-vdi"),
    pytest.param("raw", b"vhdxfile" + b"\x00" * 100, id="raw-declared-vhdx"),
    pytest.param("raw", b"QED\x00" + b"\x00" * 100, id="raw-declared-qed"),
    pytest.param("aki", RAW, id="aki-not-a-kernel"),
    pytest.param("aki", QCOW2, id="aki-qcow2-bytes"),
    pytest.param("ari", RAW, id="ari-not-an-initramfs"),
    pytest.param("qcow2", QCOW2_WITH_BACKING_FILE, id="qcow2-with-backing-file"),
    pytest.param("qcow2", QCOW2_WITH_DATA_FILE, id="qcow2-with-external-data-file"),
    pytest.param("qcow2", b"QFI", id="qcow2-truncated"),
])
def test_format_mismatch_is_422_and_writes_nothing(
    client: TestClient, admin: dict[str, str], settings: Settings, disk_format: str,
    data: bytes
) -> None:
    acct = make_account(client, admin)
    image = create(client, acct.headers, disk_format=disk_format)
    r = client.put(f"/v1/images/{image['id']}/file", content=data, headers=acct.headers)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "image_format_mismatch"
    after = client.get(f"/v1/images/{image['id']}", headers=acct.headers).json()
    assert (after["status"], after["size"], after["sha256"]) == ("queued", None, None)
    assert files_of(settings.image_dir, image["id"]) == []
    # The image stays usable: the right bytes are accepted afterwards.
    r = client.put(f"/v1/images/{image['id']}/file", content=IMAGE_BYTES[disk_format],
                   headers=acct.headers)
    assert (r.status_code, r.json()["status"]) == (200, "active")


def test_empty_upload_is_422(client: TestClient, admin: dict[str, str],
                             settings: Settings) -> None:
    acct = make_account(client, admin)
    image = create(client, acct.headers)
    r = client.put(f"/v1/images/{image['id']}/file", content=b"", headers=acct.headers)
    assert (r.status_code, r.json()["code"]) == (422, "image_empty")
    assert client.get(f"/v1/images/{image['id']}", headers=acct.headers).json()["status"] \
        == "queued"
    assert files_of(settings.image_dir, image["id"]) == []


def test_upload_over_the_limit_is_413_with_or_without_content_length(
    settings: Settings, admin: dict[str, str]
) -> None:
    small = settings.model_copy(update={"max_image_bytes": 10_000})
    with TestClient(create_app(small)) as client:
        acct = make_account(client, admin)
        image = create(client, acct.headers)
        url = f"/v1/images/{image['id']}/file"
        r = client.put(url, content=b"\x00" * 10_001, headers=acct.headers)
        assert (r.status_code, r.json()["code"]) == (413, "image_too_large")

        def chunks() -> Iterator[bytes]:  # no Content-Length: caught while streaming
            for _ in range(11):
                yield b"\x00" * 1000

        r = client.put(url, content=chunks(), headers=acct.headers)
        assert (r.status_code, r.json()["code"]) == (413, "image_too_large")
        assert client.get(f"/v1/images/{image['id']}", headers=acct.headers).json()["status"] \
            == "queued"
        assert files_of(small.image_dir, image["id"]) == []
        r = client.put(url, content=b"\x00" * 10_000, headers=acct.headers)
        assert (r.status_code, r.json()["size"]) == (200, 10_000)


@pytest.mark.parametrize("change", [
    {"name": "x" * 10_240}, {"name": ""}, {"name": "evil\x00name"}, {"name": "bell\x07"},
    {"name": 42}, {"name": " padded"}, {"disk_format": "vmdk"}, {"disk_format": None},
    {"visibility": "shared"}, {"min_disk": -1}, {"min_disk": 10**12}, {"min_disk": "big"},
    {"min_ram": -5}, {"min_ram": 10**40}, {"properties": []},
    {"properties": {"architecture": "sparc"}}, {"properties": {"kernel_id": "../../etc"}},
    {"properties": {"kernel_cmdline": "console=ttyS0\nroot=/dev/vda"}},
    {"properties": {"kernel_cmdline": "x" * 1025}}, {"properties": {"owner": "me"}},
    {"unknown": True},
])
def test_bad_image_input_is_a_422_problem(client: TestClient, admin: dict[str, str],
                                          change: dict[str, Any]) -> None:
    acct = make_account(client, admin)
    body = {"name": unique("image"), "disk_format": "raw"} | change
    r = client.post("/v1/images", json=body, headers=acct.headers)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "invalid_input"
    assert client.get("/v1/images", headers=acct.headers).json() == []


def test_other_projects_get_404_for_a_private_image(client: TestClient,
                                                    admin: dict[str, str]) -> None:
    a = make_account(client, admin)
    b = make_account(client, admin)
    image = make_image(client, a.headers)
    queued = create(client, a.headers)
    for target in (image, queued):
        url = f"/v1/images/{target['id']}"
        for r in (client.get(url, headers=b.headers),
                  client.get(url + "/file", headers=b.headers),
                  client.put(url + "/file", content=RAW, headers=b.headers),
                  client.delete(url, headers=b.headers)):
            assert (r.status_code, r.json()["code"]) == (404, "image_not_found"), r.text
    assert client.get("/v1/images", headers=b.headers).json() == []
    assert client.get(f"/v1/images/{queued['id']}", headers=a.headers).json()["status"] \
        == "queued"
    # Admins see every project's images.
    assert client.get(f"/v1/images/{image['id']}", headers=admin).status_code == 200


def test_readers_read_but_do_not_write(client: TestClient, admin: dict[str, str]) -> None:
    member = make_account(client, admin)
    reader = make_account(client, admin, role="reader", project_id=member.project_id)
    image = make_image(client, member.headers)
    queued = create(client, member.headers)
    h = reader.headers
    for r in (client.post("/v1/images", json={"name": "x", "disk_format": "raw"}, headers=h),
              client.put(f"/v1/images/{queued['id']}/file", content=RAW, headers=h),
              client.delete(f"/v1/images/{image['id']}", headers=h)):
        assert (r.status_code, r.json()["code"]) == (403, "read_only_role")
    assert client.get(f"/v1/images/{image['id']}", headers=h).status_code == 200
    assert client.get(f"/v1/images/{image['id']}/file", headers=h).content == RAW
    assert {i["id"] for i in client.get("/v1/images", headers=h).json()} == {image["id"],
                                                                             queued["id"]}


def test_only_admins_publish_and_public_images_are_read_only_to_others(
    client: TestClient, admin: dict[str, str]
) -> None:
    member = make_account(client, admin)
    r = client.post("/v1/images", json={"name": "pub", "disk_format": "raw",
                                        "visibility": "public"}, headers=member.headers)
    assert (r.status_code, r.json()["code"]) == (403, "admin_required")
    public = make_image(client, admin, visibility="public")
    other = make_account(client, admin)
    assert public["id"] in {i["id"] for i in client.get("/v1/images", headers=other.headers).json()}
    assert client.get(f"/v1/images/{public['id']}/file", headers=other.headers).content == RAW
    r = client.delete(f"/v1/images/{public['id']}", headers=other.headers)
    assert (r.status_code, r.json()["code"]) == (403, "image_not_owned")
    assert client.delete(f"/v1/images/{public['id']}", headers=admin).status_code == 204


def test_hosts_download_their_servers_images_but_list_nothing(
    client: TestClient, admin: dict[str, str], database_url: str
) -> None:
    from tests.agent_factories import make_server, set_server

    acct = make_account(client, admin)
    image = make_image(client, acct.headers, data=RAW + b"for the agent")
    host_id, credential = insert_host_row(database_url)
    # Not yet used by a server on this host: the host cannot even tell the image exists.
    r = client.get(f"/v1/images/{image['id']}/file", headers=bearer(credential))
    assert (r.status_code, r.json()["code"]) == (404, "image_not_found")
    set_server(client, make_server(client, acct.project_id, host_id), image_id=image["id"])
    r = client.get(f"/v1/images/{image['id']}/file", headers=bearer(credential))
    assert r.status_code == 200
    assert hashlib.sha256(r.content).hexdigest() == image["sha256"] == r.headers[
        "x-image-sha256"]
    assert client.get("/v1/images", headers=bearer(credential)).status_code == 401
    r = client.get(f"/v1/images/{image['id']}/file", headers=bearer("mchc_unknown"))
    assert (r.status_code, r.json()["code"]) == (401, "invalid_token")
    assert client.get(f"/v1/images/{image['id']}/file").json()["code"] == "missing_token"


def test_direct_boot_properties_name_active_kernel_and_ramdisk(
    client: TestClient, admin: dict[str, str]
) -> None:
    acct = make_account(client, admin)
    other = make_account(client, admin)
    kernel = make_image(client, acct.headers, disk_format="aki")
    ramdisk = make_image(client, acct.headers, disk_format="ari")
    props = {"kernel_id": kernel["id"], "ramdisk_id": ramdisk["id"],
             "kernel_cmdline": "console=ttyS0 root=/dev/vda rw", "architecture": "x86_64"}
    disk = make_image(client, acct.headers, disk_format="qcow2", properties=props)
    assert disk["properties"] == props

    queued_kernel = create(client, acct.headers, disk_format="aki")
    foreign_kernel = make_image(client, other.headers, disk_format="aki")
    for bad in ({"kernel_id": ramdisk["id"]}, {"kernel_id": queued_kernel["id"]},
                {"kernel_id": foreign_kernel["id"]},
                {"kernel_id": kernel["id"], "ramdisk_id": kernel["id"]},
                {"ramdisk_id": ramdisk["id"]},
                {"kernel_id": "00000000-0000-0000-0000-000000000000"}):
        r = client.post("/v1/images", json={"name": "d", "disk_format": "raw",
                                            "properties": bad}, headers=acct.headers)
        assert (r.status_code, r.json()["code"]) == (422, "invalid_image_reference"), bad

    # A kernel that a disk image names is in use.
    r = client.delete(f"/v1/images/{kernel['id']}", headers=acct.headers)
    assert (r.status_code, r.json()["code"]) == (409, "image_in_use")
    assert client.delete(f"/v1/images/{disk['id']}", headers=acct.headers).status_code == 204
    assert client.delete(f"/v1/images/{kernel['id']}", headers=acct.headers).status_code == 204


def test_delete_removes_record_and_file(client: TestClient, admin: dict[str, str],
                                        settings: Settings) -> None:
    acct = make_account(client, admin)
    image = make_image(client, acct.headers)
    assert files_of(settings.image_dir, image["id"]) == [image["id"]]
    assert client.delete(f"/v1/images/{image['id']}", headers=acct.headers).status_code == 204
    assert files_of(settings.image_dir, image["id"]) == []
    r = client.get(f"/v1/images/{image['id']}", headers=acct.headers)
    assert (r.status_code, r.json()["code"]) == (404, "image_not_found")
    # Deleting a queued image (no file yet) works too.
    queued = create(client, acct.headers)
    assert client.delete(f"/v1/images/{queued['id']}", headers=acct.headers).status_code == 204


def test_image_used_by_a_live_server_is_409_then_deleted(
    client: TestClient, admin: dict[str, str], settings: Settings, database_url: str
) -> None:
    acct = make_account(client, admin)
    image = make_image(client, acct.headers)
    flavor = make_flavor(client, admin)
    server_id = insert_server_row(database_url, acct.project_id, acct.user_id, flavor,
                                  image["id"])
    r = client.delete(f"/v1/images/{image['id']}", headers=acct.headers)
    assert (r.status_code, r.json()["code"]) == (409, "image_in_use")
    assert files_of(settings.image_dir, image["id"]) == [image["id"]]
    soft_delete_server_row(database_url, server_id)
    assert client.delete(f"/v1/images/{image['id']}", headers=acct.headers).status_code == 204
    assert files_of(settings.image_dir, image["id"]) == []
    assert client.get(f"/v1/images/{image['id']}", headers=admin).status_code == 404
    assert image["id"] not in {i["id"] for i in client.get("/v1/images", headers=admin).json()}


def test_concurrent_uploads_of_one_image_have_one_winner(
    client: TestClient, admin: dict[str, str], live_api: Callable[[int], list[str]]
) -> None:
    """Upload A holds the image in 'saving' mid-stream; upload B, on another API process,
    is refused; A then completes."""
    first, second = live_api(2)
    acct = make_account(client, admin)
    image = create(client, acct.headers)
    url = f"/v1/images/{image['id']}/file"
    release = threading.Event()
    result: dict[str, httpx.Response] = {}

    def held_body() -> Iterator[bytes]:
        yield RAW
        release.wait(timeout=60)
        yield b"tail"

    def upload_a() -> None:
        with httpx.Client(base_url=first, timeout=60) as c:
            result["a"] = c.put(url, content=held_body(), headers=acct.headers)

    thread = threading.Thread(target=upload_a)
    thread.start()
    try:
        with httpx.Client(base_url=second, timeout=60) as c:
            # Wait until A's claim is committed (a state, not a timing threshold).
            for _ in range(600):
                if c.get(f"/v1/images/{image['id']}", headers=acct.headers).json()[
                        "status"] == "saving":
                    break
                threading.Event().wait(0.05)
            else:
                raise AssertionError("upload A never reached 'saving'")
            r = c.put(url, content=RAW, headers=acct.headers)
            assert (r.status_code, r.json()["code"]) == (409, "image_not_queued")
    finally:
        release.set()
        thread.join(timeout=60)
    assert result["a"].status_code == 200, result["a"].text
    assert result["a"].json()["sha256"] == hashlib.sha256(RAW + b"tail").hexdigest()


def test_delete_during_an_upload_wins_and_the_upload_keeps_nothing(
    client: TestClient, admin: dict[str, str], settings: Settings,
    live_api: Callable[[int], list[str]]
) -> None:
    """Also how an image left in 'saving' by a crashed API process is cleared."""
    (url,) = live_api(1)
    acct = make_account(client, admin)
    image = create(client, acct.headers)
    release = threading.Event()
    result: dict[str, httpx.Response] = {}

    def held_body() -> Iterator[bytes]:
        yield RAW * 300  # past the first write batch: the temporary file has bytes
        release.wait(timeout=60)
        yield b"tail"

    def upload() -> None:
        with httpx.Client(base_url=url, timeout=60) as c:
            result["r"] = c.put(f"/v1/images/{image['id']}/file", content=held_body(),
                                headers=acct.headers)

    thread = threading.Thread(target=upload)
    thread.start()
    try:
        for _ in range(600):
            if client.get(f"/v1/images/{image['id']}", headers=acct.headers).json()[
                    "status"] == "saving" and files_of(settings.image_dir, image["id"]):
                break
            threading.Event().wait(0.05)
        else:
            raise AssertionError("the upload never reached 'saving'")
        assert client.delete(f"/v1/images/{image['id']}",
                             headers=acct.headers).status_code == 204
    finally:
        release.set()
        thread.join(timeout=60)
    assert (result["r"].status_code, result["r"].json()["code"]) == (409, "image_deleted")
    assert files_of(settings.image_dir, image["id"]) == []
    assert client.get(f"/v1/images/{image['id']}", headers=acct.headers).status_code == 404


def _vm_hwm_kib(pid: int) -> int:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1])
    raise AssertionError("no VmHWM in /proc status")


@pytest.mark.slow
def test_a_2_gib_sparse_upload_streams_with_flat_memory(
    client: TestClient, admin: dict[str, str], settings: Settings,
    live_api: Callable[[int], list[str]], live_api_pids: dict[str, int], tmp_path: Path
) -> None:
    size = 2 * 1024**3
    sparse = tmp_path / "sparse.img"
    with sparse.open("wb") as f:
        f.write(RAW[:4096])  # a raw header; the rest is a hole
        f.truncate(size)
    expected = hashlib.sha256()
    with sparse.open("rb") as f:
        while block := f.read(1024 * 1024):
            expected.update(block)

    (url,) = live_api(1)
    pid = live_api_pids[url]
    acct = make_account(client, admin)
    image = create(client, acct.headers)
    before_kib = _vm_hwm_kib(pid)
    with httpx.Client(base_url=url, timeout=600) as c, sparse.open("rb") as body:
        # A file object: httpx streams it in chunks with a Content-Length.
        r = c.put(f"/v1/images/{image['id']}/file", content=body, headers=acct.headers)
    peak_kib = _vm_hwm_kib(pid)
    print(f"\nAPI peak RSS (VmHWM): before upload {before_kib / 1024:.1f} MiB, "
          f"after a 2 GiB upload {peak_kib / 1024:.1f} MiB")
    assert r.status_code == 200, r.text
    assert r.json()["size"] == size
    assert r.json()["sha256"] == expected.hexdigest()
    assert (settings.image_dir / image["id"]).stat().st_size == size
    assert peak_kib < 300 * 1024, f"peak RSS {peak_kib} KiB"
    assert client.delete(f"/v1/images/{image['id']}", headers=acct.headers).status_code == 204


def test_a_real_server_refuses_a_mismatch_at_the_header(
    client: TestClient, admin: dict[str, str], settings: Settings,
    live_api: Callable[[int], list[str]]
) -> None:
    """The answer comes from the first bytes; the client still reads a clean 422."""
    (url,) = live_api(1)
    acct = make_account(client, admin)
    image = create(client, acct.headers)

    def qcow2_body() -> Iterator[bytes]:
        yield QCOW2
        for _ in range(256):
            yield b"\x00" * (256 * 1024)

    with httpx.Client(base_url=url, timeout=60) as c:
        r = c.put(f"/v1/images/{image['id']}/file", content=qcow2_body(),
                  headers=acct.headers)
    assert (r.status_code, r.json()["code"]) == (422, "image_format_mismatch")
    assert client.get(f"/v1/images/{image['id']}", headers=acct.headers).json()["status"] \
        == "queued"
    assert files_of(settings.image_dir, image["id"]) == []


def test_show_by_a_unique_name_and_409_when_ambiguous(client: TestClient,
                                                       admin: dict[str, str]) -> None:
    a = make_account(client, admin)
    b = make_account(client, admin)
    name = unique("named")
    first = create(client, a.headers, name=name)
    create(client, b.headers, name=name)  # invisible to a: no ambiguity for a
    assert client.get(f"/v1/images/{name}", headers=a.headers).json()["id"] == first["id"]
    create(client, a.headers, name=name)
    r = client.get(f"/v1/images/{name}", headers=a.headers)
    assert (r.status_code, r.json()["code"]) == (409, "image_name_ambiguous")
    assert len(r.json()["ids"]) == 2
