"""Evacuation request and response models."""

from __future__ import annotations

from datetime import datetime
from typing import Any, Literal

from pydantic import BaseModel, Field

from api.fields import ID_PATTERN, STRICT

Result = Literal["rebuilding", "refused", "deleted"]


class EvacuatedServer(BaseModel):
    """What an evacuation did with one server of the down host.

    ``rebuilding``: placed on ``target_host`` and rebuilt there from its image (``status`` is
    BUILD, or SHUTOFF for a server that was off); ``refused``: it stays on the down host,
    ``code`` and ``detail`` say why (``refusals`` per reason and ``refusals_by_filter``
    for ``no_valid_host``); evacuating
    again retries it. ``deleted``: it was being deleted, and the delete finished.
    """

    server_id: str
    name: str
    result: Result
    status: str
    target_host_id: str | None = None
    target_host: str | None = None
    code: str | None = None
    detail: str | None = None
    refusals: dict[str, int] | None = None
    refusals_by_filter: dict[str, int] | None = None


class EvacuationOut(BaseModel):
    """One evacuation request of a down host."""

    host_id: str
    host: str
    batch_id: str
    servers: list[EvacuatedServer]


class EvacuationProgress(BaseModel):
    """The newest evacuation of a host, counted by what its servers became since.

    ``rebuilding``: still being rebuilt on their new host; ``done``: ACTIVE or SHUTOFF there;
    ``failed``: the rebuild ended in ERROR (or the server is gone); ``refused``: left on the
    host; ``remaining``: live servers still on the host now; ``fencing_pending``: evacuated
    servers whose old copy the host's agent has not destroyed yet (it does so when it comes
    back, before anything else).
    """

    batch_id: str
    requested_at: datetime
    automatic: bool
    servers: int
    rebuilding: int
    done: int
    failed: int
    refused: int
    deleted: int
    remaining: int
    fencing_pending: int


class FenceOrdersOut(BaseModel):
    """The evacuated servers whose domains and files this host's agent must remove."""

    server_ids: list[str]


class FencedItem(BaseModel):
    """What the agent found and removed for one evacuated server.

    ``domain``: ``destroyed`` (it was running: powered off, then undefined), ``undefined``
    (defined, not running) or ``absent`` (nothing was defined).
    """

    model_config = STRICT
    server_id: str = Field(max_length=36, pattern=ID_PATTERN)
    domain: Literal["destroyed", "undefined", "absent"]
    files_removed: bool


class FencedIn(BaseModel):
    """The agent destroyed and undefined these servers' domains and removed their files."""

    model_config = STRICT
    fenced: list[FencedItem] = Field(max_length=10_000)


class FencedOut(BaseModel):
    """Fence orders closed by the report, and those still open (the agent fences again)."""

    closed: int
    pending: list[str]


def problem_counts(extra: dict[str, Any], key: str) -> dict[str, int] | None:
    """A count map of a ``no_valid_host`` problem (``refusals``, ``refusals_by_filter``)."""
    value = extra.get(key)
    return {str(k): int(v) for k, v in value.items()} if isinstance(value, dict) else None
