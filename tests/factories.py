"""Plain factory functions that create things through the HTTP API."""

from __future__ import annotations

import uuid
from dataclasses import dataclass
from typing import Any

import httpx
from fastapi.testclient import TestClient

Client = TestClient | httpx.Client


def unique(prefix: str) -> str:
    """A name no other test uses."""
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def bearer(token: str) -> dict[str, str]:
    """An Authorization header."""
    return {"Authorization": f"Bearer {token}"}


@dataclass
class Account:
    """A logged-in user on a project."""

    project_id: str
    project_name: str
    user_id: str
    user_name: str
    role: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        """Headers that authenticate as this user."""
        return bearer(self.token)


def make_project(client: Client, admin: dict[str, str], name: str | None = None) -> dict[str, Any]:
    """Create a project as admin."""
    r = client.post("/v1/projects", json={"name": name or unique("proj")}, headers=admin)
    assert r.status_code == 201, r.text
    body: dict[str, Any] = r.json()
    return body


def make_account(client: Client, admin: dict[str, str], role: str = "member",
                 project_id: str | None = None) -> Account:
    """Create a user with ``role`` on a (new) project and log in."""
    if project_id is None:
        project = make_project(client, admin)
        project_id, project_name = project["id"], project["name"]
    else:
        project_name = client.get(f"/v1/projects/{project_id}", headers=admin).json()["name"]
    name, password = unique("user"), "pw-" + uuid.uuid4().hex
    r = client.post("/v1/users", json={"name": name, "password": password,
                                       "project_id": project_id, "role": role}, headers=admin)
    assert r.status_code == 201, r.text
    user_id = r.json()["id"]
    r = client.post("/v1/auth/tokens", json={"user": name, "password": password,
                                             "project": project_id})
    assert r.status_code == 201, r.text
    return Account(project_id, project_name, user_id, name, role, r.json()["token"])


def make_flavor(client: Client, admin: dict[str, str], **fields: Any) -> dict[str, Any]:
    """Create a flavor as admin (defaults: 1 vCPU, 512 MiB, 1 GB, public)."""
    body = {"name": unique("flavor"), "vcpus": 1, "ram_mb": 512, "disk_gb": 1} | fields
    r = client.post("/v1/flavors", json=body, headers=admin)
    assert r.status_code == 201, r.text
    flavor: dict[str, Any] = r.json()
    return flavor


# Smallest bytes that pass the format check of each disk format.
IMAGE_BYTES: dict[str, bytes] = {
    "raw": b"\x00" * 4096 + b"raw disk",
    "qcow2": b"QFI\xfb\x00\x00\x00\x03" + b"\x00" * 4096,
    "aki": b"\x00" * 0x202 + b"HdrS" + b"\x00" * 512,
    "ari": b"070701" + b"\x00" * 512,
}


def make_image(client: Client, headers: dict[str, str], data: bytes | None = None,
               **fields: Any) -> dict[str, Any]:
    """Create an image and upload ``data`` (default: valid bytes for its disk_format)."""
    body = {"name": unique("image"), "disk_format": "raw"} | fields
    r = client.post("/v1/images", json=body, headers=headers)
    assert r.status_code == 201, r.text
    image_id = r.json()["id"]
    payload = IMAGE_BYTES[body["disk_format"]] if data is None else data
    r = client.put(f"/v1/images/{image_id}/file", content=payload, headers=headers)
    assert r.status_code == 200, r.text
    image: dict[str, Any] = r.json()
    return image


def insert_server_row(database_url: str, project_id: str, user_id: str,
                      flavor: dict[str, Any], image_id: str) -> str:
    """Insert a live server row straight into the database; returns its id.

    For rules of other parts (flavor/image in use) that need a server but not the servers API.
    """
    from sqlalchemy import insert

    from api.db import make_engine, new_id, utcnow
    from api.models import Server

    server_id = new_id()
    engine = make_engine(database_url)
    with engine.begin() as conn:
        conn.execute(insert(Server).values(
            id=server_id, project_id=project_id, user_id=user_id, name="vm",
            flavor_id=flavor["id"], vcpus=flavor["vcpus"], ram_mb=flavor["ram_mb"],
            disk_gb=flavor["disk_gb"], image_id=image_id, status="ACTIVE", addresses=[],
            generation=0, created_at=utcnow(), updated_at=utcnow()))
    engine.dispose()
    return server_id


def soft_delete_server_row(database_url: str, server_id: str) -> None:
    """Mark a server row deleted the way the servers API does (status DELETED, deleted_at)."""
    from sqlalchemy import update

    from api.db import make_engine, utcnow
    from api.models import Server

    engine = make_engine(database_url)
    with engine.begin() as conn:
        conn.execute(update(Server).where(Server.id == server_id)
                     .values(status="DELETED", deleted_at=utcnow()))
    engine.dispose()


def insert_host_row(database_url: str) -> tuple[str, str]:
    """Insert an enrolled host straight into the database; returns (host id, credential)."""
    from sqlalchemy import insert

    from api.db import make_engine, new_id, utcnow
    from api.models import Host
    from api.security import digest, new_secret

    host_id, credential = new_id(), new_secret("mchc_")
    engine = make_engine(database_url)
    with engine.begin() as conn:
        conn.execute(insert(Host).values(
            id=host_id, name=unique("host"), availability_zone="nova", libvirt_uri="test:///default",
            virt_type="qemu", architecture="x86_64", enabled=True, aggregates={},
            credential_digest=digest(credential), generation=0, created_at=utcnow()))
    engine.dispose()
    return host_id, credential
