"""Server group request and response models."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel

from api.fields import STRICT, Name

Policy = Literal["affinity", "anti-affinity", "soft-affinity", "soft-anti-affinity"]


class ServerGroupCreate(BaseModel):
    """A new server group: hard policies fail a placement that would break them, soft ones
    only prefer."""

    model_config = STRICT
    name: Name
    policy: Policy


class ServerGroupOut(BaseModel):
    """A server group and its members (ids of its servers not yet deleted)."""

    id: str
    name: str
    project_id: str
    policy: Policy
    members: list[str]
    created_at: datetime


class ServerGroupList(BaseModel):
    """The project's server groups."""

    server_groups: list[ServerGroupOut]
