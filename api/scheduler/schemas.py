"""Request and response models of the scheduler's admin endpoint."""

from __future__ import annotations

from typing import Any

from pydantic import BaseModel, Field, model_validator

from api.fields import STRICT, Count, Name


class SimulateRequest(BaseModel):
    """A server request to try without claiming: a flavor (or raw sizes) and the create options."""

    model_config = STRICT

    flavor: Name | None = None
    vcpus: Count | None = None
    ram_mb: Count | None = None
    disk_gb: Count | None = None
    image: Name | None = None
    availability_zone: Name | None = None
    server_group: Name | None = None
    # Simulate as this project: only its flavors, images and server groups are visible
    # (default: the caller's own visibility, as for a create).
    project_id: Name | None = None
    # Replays a decision: the same seed on the same pool picks the same host as a create
    # whose X-Request-Id is this value. Default: this request's own id.
    request_id: str | None = Field(default=None, max_length=64, pattern=r"^[A-Za-z0-9._-]+$")

    @model_validator(mode="after")
    def _sizes(self) -> SimulateRequest:
        sizes = (self.vcpus, self.ram_mb, self.disk_gb)
        if self.flavor is None and None in sizes:
            raise ValueError("give a flavor, or vcpus, ram_mb and disk_gb")
        if self.flavor is not None and any(s is not None for s in sizes):
            raise ValueError("give a flavor or sizes, not both")
        return self


class HostRef(BaseModel):
    """A host by id and name."""

    id: str
    name: str


class HostCapacity(BaseModel):
    """How many more of the request fit on one host."""

    host_id: str
    host: str
    count: int


class Capacity(BaseModel):
    """How many more of the request fit in the pool (or the requested zone)."""

    availability_zone: str | None
    additional: int
    by_host: list[HostCapacity]


class SimulateResponse(BaseModel):
    """Would it fit, where, and if not why; plus the capacity left for it."""

    fits: bool
    host: HostRef | None
    request_id: str
    hosts: int
    candidates: int
    refusals: dict[str, int]
    # Hosts refused per filter plugin name (each by the first filter that refused it).
    refusals_by_filter: dict[str, int]
    detail: str
    per_host: list[dict[str, str]]
    top: list[dict[str, Any]]
    capacity: Capacity
