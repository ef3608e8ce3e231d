"""Plain factory functions for hosts and for server rows written straight to the database.

Servers are inserted through a session (not the servers API, built in parallel) the way the
servers service will leave them: with allocations, and with ``notify_host`` called.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from typing import Any

from sqlalchemy.orm import Session, sessionmaker

from api.agent import liveness
from api.models import Allocation, Flavor, Image, Server
from api.servers.lifecycle import notify_host
from tests.factories import Client, bearer, unique


@dataclass
class EnrolledHost:
    """A host enrolled through the API, with its credential."""

    id: str
    name: str
    credential: str

    @property
    def headers(self) -> dict[str, str]:
        """Headers that authenticate as this host's agent."""
        return bearer(self.credential)


def enrollment_token(client: Client, admin: dict[str, str]) -> str:
    """A fresh enrollment token."""
    r = client.post("/v1/hosts/enrollment-tokens", headers=admin)
    assert r.status_code == 201, r.text
    token: str = r.json()["token"]
    return token


def enroll_host(client: Client, admin: dict[str, str], name: str | None = None,
                availability_zone: str = "nova") -> EnrolledHost:
    """Enroll a new host (default: a unique name) and return its credential."""
    name = name or unique("node")
    r = client.post("/v1/agent/enroll", json={
        "token": enrollment_token(client, admin), "name": name,
        "availability_zone": availability_zone, "libvirt_uri": "test:///default",
        "virt_type": "qemu", "architecture": "x86_64"})
    assert r.status_code == 201, r.text
    return EnrolledHost(r.json()["host_id"], name, r.json()["credential"])


def inventory(vcpus: int = 16, ram_mb: int = 32768, disk_gb: int = 500) -> dict[str, Any]:
    """An inventory body."""
    return {"VCPU": {"total": vcpus}, "MEMORY_MB": {"total": ram_mb},
            "DISK_GB": {"total": disk_gb}}


def beating_host(client: Client, admin: dict[str, str], availability_zone: str) -> EnrolledHost:
    """A new host with the default inventory that has sent a heartbeat (up: servers may be
    placed on it), alone in ``availability_zone`` when the zone is new."""
    host = enroll_host(client, admin, availability_zone=availability_zone)
    r = client.put("/v1/agent/inventory", headers=host.headers, json=inventory())
    assert r.status_code == 200, r.text
    r = client.post("/v1/agent/heartbeat", headers=host.headers, json={"observed": []})
    assert r.status_code == 200, r.text
    return host


@contextmanager
def db(client: Client) -> Iterator[Session]:
    """A unit of work on the test app's database (commits at the end)."""
    maker: sessionmaker[Session] = client.app.state.sessionmaker  # type: ignore[union-attr]
    with maker() as session, session.begin():
        yield session


def make_server(client: Client, project_id: str, host_id: str | None, *,
                status: str = "BUILD", task_state: str | None = "spawning",
                name: str | None = None, vcpus: int = 1, ram_mb: int = 512, disk_gb: int = 1,
                image_properties: dict[str, Any] | None = None, notify: bool = True) -> str:
    """Insert a flavor, an active image, a server on ``host_id`` and its allocations."""
    with db(client) as s:
        flavor = Flavor(name=unique("flv"), vcpus=vcpus, ram_mb=ram_mb, disk_gb=disk_gb)
        image = Image(project_id=project_id, name=unique("img"), status="active",
                      disk_format="qcow2", size=1024, sha256="ab" * 32,
                      properties=image_properties or {})
        s.add_all([flavor, image])
        s.flush()
        server = Server(project_id=project_id, user_id="u", name=name or unique("vm"),
                        flavor_id=flavor.id, vcpus=vcpus, ram_mb=ram_mb, disk_gb=disk_gb,
                        image_id=image.id, status=status, task_state=task_state,
                        host_id=host_id, user_data="#cloud-config\n", key_data="ssh-ed25519 AAA")
        s.add(server)
        s.flush()
        if host_id is not None:
            for rc, used in (("VCPU", vcpus), ("MEMORY_MB", ram_mb), ("DISK_GB", disk_gb)):
                s.add(Allocation(server_id=server.id, host_id=host_id, resource_class=rc,
                                 used=used))
            if notify:
                notify_host(s, host_id)
        return server.id


def set_server(client: Client, server_id: str, **values: Any) -> None:
    """Change a server as the servers service would: bump its generation and notify."""
    with db(client) as s:
        server = s.get(Server, server_id)
        assert server is not None
        for key, value in values.items():
            setattr(server, key, value)
        server.generation += 1
        if server.host_id is not None:
            notify_host(s, server.host_id)


def observe(client: Client, host_headers: dict[str, str], server_id: str, state: str,
            **extra: Any) -> dict[str, Any]:
    """Report what the host's agent saw of a server (a fresh idempotency key each call)."""
    from datetime import UTC, datetime

    r = client.post(f"/v1/agent/servers/{server_id}/observations", headers=host_headers,
                    json={"state": state, "seen_at": datetime.now(UTC).isoformat(),
                          "idempotency_key": unique("obs"), **extra})
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def hold_silence(host_id: str, write: Callable[[], None]) -> None:
    """Apply ``write``, which stores an old last heartbeat for ``host_id`` (a silence), so
    that no coalesced heartbeat (``api.agent.liveness``) written afterwards undoes it: the
    host's pending heartbeat in this process is dropped, and the write is repeated once any
    flush already under way (in this or another API process) has ended."""
    for again in (False, True):
        liveness.HEARTBEATS.forget(host_id)
        write()
        if not again:
            time.sleep(2.5)  # > MINICLOUD_HEARTBEAT_FLUSH_SECONDS (1 s) and a flush's write
