"""Quota request and response models."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from api.fields import STRICT

Limit = Annotated[int, Field(ge=0, le=2_147_483_647, strict=True)]
"""A quota limit: a non-negative integer that fits the database column."""


class QuotaValues(BaseModel):
    """One number per quota resource."""

    instances: int
    vcpus: int
    ram_mb: int
    disk_gb: int


class QuotaOut(BaseModel):
    """A project's limits and what it uses now (computed live, never cached)."""

    project_id: str
    limits: QuotaValues
    usage: QuotaValues


class QuotaUpdate(BaseModel):
    """Any subset of the limits; omitted ones keep their value."""

    model_config = STRICT
    instances: Limit | None = None
    vcpus: Limit | None = None
    ram_mb: Limit | None = None
    disk_gb: Limit | None = None
