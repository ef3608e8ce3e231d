"""An upload declared ``raw`` whose content ``qemu-img`` would read as another format is
refused (422 ``image_format_mismatch``), for every format qemu recognises by content.

Each case is the smallest header that qemu's probe for that format claims (checked against
``qemu-img info`` without ``-f``: each is opened by that format's driver, not as raw).
"""

from __future__ import annotations

import struct

import pytest
from fastapi.testclient import TestClient

from api.config import Settings
from tests.factories import IMAGE_BYTES, make_account, unique

PAD = b"\0" * 600
HEADERS = {
    "qcow2": b"QFI\xfb\x00\x00\x00\x03" + PAD,
    "qcow": b"QFI\xfb\x00\x00\x00\x01" + PAD,
    "qed": b"QED\x00" + PAD,
    "vmdk-sparse": b"KDMV" + PAD,
    "vmdk-cowd": b"COWD" + PAD,
    "vmdk-descriptor": b"# Disk DescriptorFile\nversion=1\nCID=fffffffe\n" + PAD,
    # qemu accepts comment and blank lines before the version line, LF or CRLF.
    "vmdk-descriptor-crlf": b"# made by hand\r\n   \r\nversion=3\r\n" + PAD,
    "vdi-signature": b"\0" * 0x40 + b"\x7f\x10\xda\xbe" + PAD,
    "vdi-text": b"<<< Oracle VM VirtualBox Disk Image >>>\n" + PAD,
    "vhdx": b"vhdxfile" + PAD,
    "vpc": b"conectix" + PAD,
    "luks": b"LUKS\xba\xbe\x00\x01" + PAD,
    "parallels": b"WithoutFreeSpace" + struct.pack("<I", 2) + PAD,
    "parallels-ext": b"WithouFreSpacExt" + struct.pack("<I", 2) + PAD,
    "bochs": b"Bochs Virtual HD Image\0".ljust(32, b"\0") + b"Redolog\0".ljust(16, b"\0")
             + b"Growing\0".ljust(16, b"\0") + struct.pack("<I", 0x00020000) + PAD,
    "cloop": b"#!/bin/sh\n#V2.0 Format\nmodprobe cloop file=$0 && "
             b"mount -r -t iso9660 /dev/cloop $1\n" + PAD,
}
EXPECTED = {"vmdk-sparse": "vmdk", "vmdk-cowd": "vmdk", "vmdk-descriptor": "vmdk",
            "vmdk-descriptor-crlf": "vmdk", "vdi-signature": "vdi", "vdi-text": "vdi",
            "parallels-ext": "parallels"}


@pytest.mark.parametrize("case", sorted(HEADERS))
def test_raw_upload_that_qemu_reads_as_another_format_is_422(
    client: TestClient, admin: dict[str, str], settings: Settings, case: str
) -> None:
    acct = make_account(client, admin)
    r = client.post("/v1/images", json={"name": unique("image"), "disk_format": "raw"},
                    headers=acct.headers)
    image = r.json()
    r = client.put(f"/v1/images/{image['id']}/file", content=HEADERS[case],
                   headers=acct.headers)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "image_format_mismatch"
    assert f"is a {EXPECTED.get(case, case)} image" in r.json()["detail"]
    after = client.get(f"/v1/images/{image['id']}", headers=acct.headers).json()
    assert (after["status"], after["size"]) == ("queued", None)


@pytest.mark.parametrize("data", [
    pytest.param(IMAGE_BYTES["raw"], id="zeros"),
    pytest.param(b"\nversion=1\n" + PAD, id="text-qemu-does-not-read-as-vmdk"),
    pytest.param(b"QFI" + PAD, id="three-bytes-of-a-magic"),
    pytest.param(b"\0" * 0x40 + b"\x7f\x10\xda" + PAD, id="vdi-signature-cut-short"),
])
def test_raw_upload_that_qemu_reads_as_raw_is_accepted(
    client: TestClient, admin: dict[str, str], data: bytes
) -> None:
    acct = make_account(client, admin)
    image = client.post("/v1/images", json={"name": unique("image"), "disk_format": "raw"},
                        headers=acct.headers).json()
    r = client.put(f"/v1/images/{image['id']}/file", content=data, headers=acct.headers)
    assert (r.status_code, r.json()["status"]) == (200, "active"), r.text
