"""Migration request and response models."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel

from api.servers.schemas import Fault


class MigrationOut(BaseModel):
    """One move of a server; host ids only for admins (null otherwise)."""

    id: str
    server_id: str
    kind: str
    status: str
    source_host_id: str | None
    dest_host_id: str | None
    progress: int
    data_remaining: int | None
    fault: Fault | None
    created_at: datetime
    updated_at: datetime
    finished_at: datetime | None


class MigrationList(BaseModel):
    """A server's migrations, newest first."""

    migrations: list[MigrationOut]


class RefusalOut(BaseModel):
    """A server the drain could not move: the scheduler's (or the state's) reason."""

    server_id: str
    code: str
    reason: str


class DrainOut(BaseModel):
    """A host drain's progress (`state`: draining, drained, or null when not draining)."""

    host_id: str
    state: str | None
    servers_left: int
    moving: list[str]
    completed: int
    refused: list[RefusalOut]
