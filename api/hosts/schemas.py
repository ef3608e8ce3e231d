"""Host request and response models."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, Field, StringConstraints

from api.evacuation.schemas import EvacuationProgress
from api.fields import ID_PATTERN, STRICT, TEXT_PATTERN, Description

ResourceClass = Literal["VCPU", "MEMORY_MB", "DISK_GB"]

AvailabilityZone = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._-]*$")
]
"""An availability zone name: letters, digits, ``._-``."""

AggregateKey = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
]
AggregateValue = Annotated[
    str, StringConstraints(max_length=255, pattern=r"^[^\x00-\x1f\x7f-\x9f]*$")
]
# Overcommit beyond 100x is a typo, not a policy.
Ratio = Annotated[float, Field(gt=0, le=100)]
Reserved = Annotated[int, Field(ge=0, le=1_000_000_000)]


class HostCredentialOut(BaseModel):
    """A host's new credential (shown only in this answer)."""

    host_id: str
    credential: str


class EnrollmentTokenOut(BaseModel):
    """A new enrollment token: the secret is shown only here."""

    token: str
    expires_at: datetime


class ResourceOut(BaseModel):
    """One resource class of a host, with the capacity arithmetic spelled out."""

    total: int
    reserved: int
    allocation_ratio: float
    capacity: int  # floor((total - reserved) * allocation_ratio)
    allocated: int
    min_unit: int
    max_unit: int | None


class ForeignDomain(BaseModel):
    """A minicloud domain on the host's libvirt whose metadata names another host: its agent
    leaves it alone (quarantined) and reports it."""

    model_config = STRICT
    server_id: str = Field(max_length=36, pattern=ID_PATTERN)
    host_id: str = Field(max_length=36, pattern=ID_PATTERN)


class FailingServer(BaseModel):
    """A server whose reconcile failed on the agent's last attempt (it retries with backoff)."""

    model_config = STRICT
    server_id: str = Field(max_length=36, pattern=ID_PATTERN)
    message: str = Field(max_length=4096, pattern=TEXT_PATTERN)


class LoopProgress(BaseModel):
    """The agent's reconcile-loop progress, as its heartbeats carry it."""

    model_config = STRICT
    passes: int = Field(ge=0, le=2**62)
    pass_started_at: AwareDatetime | None = None
    last_pass_at: AwareDatetime | None = None
    failing_count: int = Field(default=0, ge=0, le=1_000_000_000)
    failing: list[FailingServer] = Field(default_factory=list, max_length=100)


class HostOut(BaseModel):
    """A compute host as admins see it."""

    id: str
    name: str
    availability_zone: str
    libvirt_uri: str
    virt_type: str
    architecture: str
    enabled: bool
    disabled_reason: str | None
    # down: no heartbeat within host_down_after_seconds; degraded: heartbeats arrive but the
    # agent's reconcile loop completed no pass within host_degraded_after_seconds.
    state: Literal["up", "down", "degraded"]
    last_heartbeat_at: datetime | None
    aggregates: dict[str, str]
    resources: dict[str, ResourceOut]
    servers: int
    created_at: datetime
    # Quarantined domains of other hosts, as the agent's last heartbeat reported them.
    foreign_domains: list[ForeignDomain]
    # "draining" while a drain moves its servers off (GET /v1/hosts/{id}/drain), else null.
    maintenance: str | None = None
    # The newest evacuation of the host (None: never evacuated); see api.evacuation.
    evacuation: EvacuationProgress | None = None
    # The agent's last reported loop progress, and when (API clock) its pass count last moved.
    loop_progress: LoopProgress | None = None
    loop_progress_at: datetime | None = None
    # The live-migration endpoint its agent registered (libvirt_uri, migrate_uri, port_min,
    # port_max, instances_dir, image_cache_dir); null: the host takes no live migrations.
    migration_endpoint: dict[str, Any] | None = None


class HostPatch(BaseModel):
    """What an admin may change on a host; absent fields stay as they are.

    ``allocation_ratios`` values may be null to fall back to the pool-wide ratio.
    """

    model_config = STRICT
    enabled: bool | None = None
    disabled_reason: Description | None = None
    availability_zone: AvailabilityZone | None = None
    aggregates: dict[AggregateKey, AggregateValue] | None = Field(default=None, max_length=64)
    allocation_ratios: dict[ResourceClass, Ratio | None] | None = None
    reserved: dict[ResourceClass, Reserved] | None = None


class AvailabilityZoneOut(BaseModel):
    """An availability zone; ``hosts`` is only filled for admins."""

    name: str
    available: bool
    hosts: list[str] | None = None
