"""Plain factory functions that insert scheduler rows directly through a session."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from sqlalchemy.orm import Session

from api.db import new_id, utcnow
from api.models import Flavor, Host, Image, Inventory, Project, Server, ServerGroup
from scheduler.framework import RequestSpec, ServerGroupSpec
from tests.scheduler.builders import sizes


@dataclass(frozen=True)
class Catalog:
    """A project with one flavor and one image: what a server row points at."""

    project_id: str
    flavor_id: str
    image_id: str


def make_catalog(session: Session) -> Catalog:
    """Insert a project, a flavor and an image."""
    tag = new_id()[:8]
    project = Project(name=f"sched-{tag}")
    flavor = Flavor(name=f"sched-{tag}", vcpus=1, ram_mb=1024, disk_gb=10)
    session.add_all([project, flavor])
    session.flush()
    image = Image(project_id=project.id, name=f"img-{tag}", disk_format="qcow2",
                  status="active")
    session.add(image)
    session.flush()
    return Catalog(project.id, flavor.id, image.id)


def make_host(session: Session, *, name: str | None = None, zone: str = "nova",
              vcpus: int = 4, ram_mb: int = 10240, disk_gb: int = 200,
              enabled: bool = True, heartbeat_age: float | None = 0.0,
              ratios: dict[str, float] | None = None, architecture: str = "x86_64",
              aggregates: dict[str, Any] | None = None) -> str:
    """Insert a host with one inventory per resource class; ``heartbeat_age`` None = never."""
    host = Host(name=name or f"host-{new_id()[:8]}", availability_zone=zone,
                enabled=enabled, architecture=architecture, aggregates=aggregates or {},
                last_heartbeat_at=(utcnow() - timedelta(seconds=heartbeat_age)
                                   if heartbeat_age is not None else None))
    session.add(host)
    session.flush()
    ratios = ratios or {}
    for rc, total in (("VCPU", vcpus), ("MEMORY_MB", ram_mb), ("DISK_GB", disk_gb)):
        session.add(Inventory(host_id=host.id, resource_class=rc, total=total,
                              allocation_ratio=ratios.get(rc)))
    session.flush()
    return host.id


def make_group(session: Session, catalog: Catalog, policy: str) -> str:
    """Insert a server group."""
    group = ServerGroup(project_id=catalog.project_id, name=f"grp-{new_id()[:8]}", policy=policy)
    session.add(group)
    session.flush()
    return group.id


def make_server(session: Session, catalog: Catalog, *, vcpus: int = 1, ram_mb: int = 1024,
                disk_gb: int = 10, group_id: str | None = None) -> str:
    """Insert a server row in BUILD (what POST /v1/servers does before placing it)."""
    server = Server(project_id=catalog.project_id, user_id=new_id(), name="srv",
                    flavor_id=catalog.flavor_id, image_id=catalog.image_id, vcpus=vcpus,
                    ram_mb=ram_mb, disk_gb=disk_gb, server_group_id=group_id)
    session.add(server)
    session.flush()
    return server.id


def spec_for(server_id: str, catalog: Catalog, *, vcpus: int = 1, ram_mb: int = 1024,
             disk_gb: int = 10, zone: str | None = None, group_id: str | None = None,
             policy: str | None = None, request_id: str = "req-1") -> RequestSpec:
    """The RequestSpec the servers code builds for such a server."""
    group = ServerGroupSpec(group_id, policy or "") if group_id else None
    return RequestSpec(server_id=server_id, project_id=catalog.project_id,
                       resources=sizes(vcpus=vcpus, ram_mb=ram_mb, disk_gb=disk_gb),
                       availability_zone=zone, server_group=group, request_id=request_id)
