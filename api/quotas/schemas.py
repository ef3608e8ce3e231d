"""Quota request and response models."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, Field

from api.fields import STRICT

Limit = Annotated[int, Field(ge=0, le=2_147_483_647, strict=True)]
"""A quota limit: a non-negative integer that fits the database column."""
ByteLimit = Annotated[int, Field(ge=0, le=9_223_372_036_854_775_807, strict=True)]
"""A limit in bytes (the column is 64-bit)."""


class QuotaValues(BaseModel):
    """One number per quota resource."""

    instances: int
    vcpus: int
    ram_mb: int
    disk_gb: int
    images: int
    image_bytes: int


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
    images: Limit | None = None
    image_bytes: ByteLimit | None = None
