"""The placement step of a server create: the bridge from a server row to the scheduler.

``service.create_server`` calls ``place`` inside the create's unit of work, right after the
quota check and the server insert; the scheduler claims a host (allocation rows, host and
server-group generations) or raises NoValidHost, which rolls the whole create back.
"""

from __future__ import annotations

from typing import Any

from sqlalchemy.orm import Session

from api.config import Settings
from api.models import Flavor, Image, Server, ServerGroup
from api.scheduler.placement import PlacementResult
from api.scheduler.placement import place as schedule
from api.scheduler.placement import reclaim as schedule_again
from scheduler.framework import RequestSpec, ServerGroupSpec


def request_spec(server: Server, flavor: Flavor, image: Image,
                 group: ServerGroup | None, request_id: str) -> RequestSpec:
    """What the scheduler needs to know about ``server`` (sizes copied at create time)."""
    props: dict[str, Any] = dict(image.properties or {})
    arch = props.get("architecture")
    return RequestSpec(
        server_id=server.id, project_id=server.project_id,
        vcpus=server.vcpus, ram_mb=server.ram_mb, disk_gb=server.disk_gb,
        image_min_ram=image.min_ram, image_min_disk=image.min_disk,
        image_architecture=arch if isinstance(arch, str) else None,
        extra_specs={str(k): str(v) for k, v in (flavor.extra_specs or {}).items()},
        availability_zone=server.availability_zone,
        server_group=ServerGroupSpec(id=group.id, policy=group.policy) if group else None,
        request_id=request_id,
    )


def resize_spec(server: Server, flavor: Flavor, image: Image | None,
                request_id: str) -> RequestSpec:
    """The request for ``server`` at ``flavor``'s sizes (no group, no zone: it stays put)."""
    props: dict[str, Any] = dict(image.properties or {}) if image is not None else {}
    arch = props.get("architecture")
    return RequestSpec(
        server_id=server.id, project_id=server.project_id,
        vcpus=flavor.vcpus, ram_mb=flavor.ram_mb, disk_gb=flavor.disk_gb,
        image_min_ram=image.min_ram if image is not None else 0,
        image_min_disk=image.min_disk if image is not None else 0,
        image_architecture=arch if isinstance(arch, str) else None,
        extra_specs={str(k): str(v) for k, v in (flavor.extra_specs or {}).items()},
        request_id=request_id,
    )


def reclaim(session: Session, settings: Settings, spec: RequestSpec, host_id: str, *,
            explain_hosts: bool) -> PlacementResult:
    """Re-claim ``spec``'s sizes on ``host_id`` with the server's current allocations freed;
    raises NoValidHost (409) or Conflict ``placement_busy``."""
    return schedule_again(session, settings, spec, host_id, explain_hosts=explain_hosts)


def place(session: Session, settings: Settings, spec: RequestSpec, *,
          explain_hosts: bool) -> PlacementResult:
    """Claim a host for ``spec``; raises NoValidHost (409) or Conflict ``placement_busy``."""
    return schedule(session, settings, spec, request_id=spec.request_id,
                    explain_hosts=explain_hosts)
