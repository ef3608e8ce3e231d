"""Image request and response models."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, StringConstraints

from api.fields import STRICT, Name

DiskFormat = Literal["qcow2", "raw", "aki", "ari"]
Visibility = Literal["private", "public"]
Architecture = Literal["x86_64", "aarch64", "i686"]

ImageRef = Annotated[
    str,
    StringConstraints(
        pattern=r"^[0-9a-f]{8}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{4}-[0-9a-f]{12}$"),
]
"""The id of another image (a canonical lower-case UUID)."""

KernelCmdline = Annotated[
    str, StringConstraints(max_length=1024, pattern=r"^[^\x00-\x1f\x7f-\x9f]*$")
]
"""A kernel command line: printable, at most 1024 characters."""


class ImageProperties(BaseModel):
    """What a hypervisor needs to know beyond the bytes."""

    model_config = STRICT
    kernel_id: ImageRef | None = None
    ramdisk_id: ImageRef | None = None
    kernel_cmdline: KernelCmdline | None = None
    architecture: Architecture | None = None


class ImageCreate(BaseModel):
    """A new image record; the bytes follow with ``PUT /v1/images/{id}/file``."""

    model_config = STRICT
    name: Name
    disk_format: DiskFormat
    visibility: Visibility = "private"
    min_disk: int = Field(default=0, ge=0, le=100_000)
    min_ram: int = Field(default=0, ge=0, le=16 * 1024 * 1024)
    properties: ImageProperties = Field(default_factory=ImageProperties)


class ImageOut(BaseModel):
    """An image."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    project_id: str
    status: str
    disk_format: str
    visibility: str
    size: int | None
    sha256: str | None
    min_disk: int
    min_ram: int
    properties: dict[str, Any]
    created_at: datetime
    updated_at: datetime
