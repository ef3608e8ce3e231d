"""Flavor request and response models."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StringConstraints

from api.fields import STRICT, ShortName

MAX_RAM_MB = 16 * 1024 * 1024  # 16 TiB
MAX_EXTRA_SPECS = 32

SpecKey = Annotated[
    str, StringConstraints(min_length=1, max_length=64, pattern=r"^[A-Za-z0-9][A-Za-z0-9._:-]*$")
]
"""An extra-spec key: identifier-like (``ssd``, ``hw:cpu_policy``)."""

SpecValue = Annotated[
    str, StringConstraints(min_length=0, max_length=255, pattern=r"^[^\x00-\x1f\x7f-\x9f]*$")
]
"""An extra-spec value: printable, at most 255 characters."""


class FlavorCreate(BaseModel):
    """A new flavor (admin)."""

    model_config = STRICT
    name: ShortName
    vcpus: int = Field(ge=1, le=1024)
    ram_mb: int = Field(ge=64, le=MAX_RAM_MB)
    disk_gb: int = Field(ge=0, le=100_000)
    is_public: StrictBool = True
    extra_specs: dict[SpecKey, SpecValue] = Field(default_factory=dict,
                                                  max_length=MAX_EXTRA_SPECS)


class FlavorOut(BaseModel):
    """A flavor."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    is_public: bool
    extra_specs: dict[str, str]


class FlavorAccessOut(BaseModel):
    """The projects a private flavor is shared with."""

    flavor_id: str
    projects: list[str]
