"""Plain factory functions that insert catalog and host rows straight into the test database.

For rows whose own API another part builds (images, flavors, hosts) or states only an agent
reaches (ACTIVE, SHUTOFF): tests of the servers API create them here, then go through HTTP.
"""

from __future__ import annotations

from functools import cache
from typing import Any

from sqlalchemy import Engine, update
from sqlalchemy.orm import Session

from api.db import make_engine
from api.models import Flavor, Host, Image, Server
from tests.factories import unique


@cache
def _engine(database_url: str) -> Engine:
    return make_engine(database_url)


def make_image_row(database_url: str, project_id: str, visibility: str = "private",
                   min_disk: int = 0, min_ram: int = 0, status: str = "active",
                   name: str | None = None) -> str:
    """Insert an image (active by default) owned by ``project_id``; returns its id."""
    with Session(_engine(database_url)) as session:
        image = Image(project_id=project_id, name=name or unique("img"), status=status,
                      disk_format="qcow2", visibility=visibility, size=1024, sha256="0" * 64,
                      min_disk=min_disk, min_ram=min_ram, properties={})
        session.add(image)
        session.commit()
        return image.id


def make_flavor_row(database_url: str, vcpus: int = 1, ram_mb: int = 512, disk_gb: int = 1,
                    is_public: bool = True) -> dict[str, Any]:
    """Insert a flavor; returns ``{"id", "name"}``."""
    with Session(_engine(database_url)) as session:
        flavor = Flavor(name=unique("flv"), vcpus=vcpus, ram_mb=ram_mb, disk_gb=disk_gb,
                        is_public=is_public, extra_specs={})
        session.add(flavor)
        session.commit()
        return {"id": flavor.id, "name": flavor.name}


def make_host_row(database_url: str) -> dict[str, Any]:
    """Insert an enabled host; returns ``{"id", "name"}``."""
    with Session(_engine(database_url)) as session:
        host = Host(name=unique("host"), aggregates={})
        session.add(host)
        session.commit()
        return {"id": host.id, "name": host.name}


def set_server_state(database_url: str, server_id: str, **values: Any) -> None:
    """Force columns of a server (status, task_state, host_id ...), as an agent report would."""
    with Session(_engine(database_url)) as session:
        session.execute(update(Server).where(Server.id == server_id).values(**values))
        session.commit()
