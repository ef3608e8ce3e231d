"""The placement step of a server create: where the scheduler plugs in.

``service.create_server`` calls ``place(session, settings, spec)`` in the create's unit of
work, right after the quota check and the server insert. The scheduler replaces the body of
``place``: pick a host for ``spec``, claim it (write ``allocations`` rows, bump the host's and
server group's generations) and return the ``Placement``; ``create_server`` then sets the
server's ``host_id`` and task ``spawning``. Returning None leaves the server in
BUILD/``scheduling`` with no host (what happens until the scheduler lands). A placement
failure should raise a DomainError (the whole create rolls back, quota included) or return
None and let a later pass retry.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any

from sqlalchemy.orm import Session

from api.config import Settings


@dataclass(frozen=True)
class PlacementSpec:
    """What the scheduler needs to place one server (all copied at create time)."""

    server_id: str
    project_id: str
    request_id: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    flavor_extra_specs: dict[str, Any] = field(default_factory=dict)
    image_properties: dict[str, Any] = field(default_factory=dict)
    availability_zone: str | None = None
    server_group_id: str | None = None
    server_group_policy: str | None = None


@dataclass(frozen=True)
class Placement:
    """The scheduler's answer: the claimed host (allocations are already written)."""

    host_id: str


def place(session: Session, settings: Settings, spec: PlacementSpec) -> Placement | None:
    """Place and claim ``spec``; None: not placed (the server waits in BUILD/scheduling)."""
    del session, settings, spec  # the scheduler is not wired in yet
    return None
