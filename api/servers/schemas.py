"""Server request and response models."""

from __future__ import annotations

import base64
import binascii
import re
import struct
from datetime import datetime
from typing import Annotated, Any, Literal

from fastapi import Query
from pydantic import AfterValidator, BaseModel, Field, StringConstraints

from api.fields import ID_PATTERN, STRICT, Name, ShortName

MAX_USER_DATA_BYTES = 64 * 1024

# Markers, like path ids, are checked before they reach SQL (see api.fields.ID_PATTERN).
MarkerId = Annotated[str | None, Query(min_length=1, max_length=64, pattern=ID_PATTERN)]
"""A pagination marker: the id of the last object of the previous page."""

Ref = Annotated[str, StringConstraints(min_length=1, max_length=255,
                                        pattern=r"^[^\x00-\x1f\x7f-\x9f]+$")]
"""A reference to a flavor, image or server group: its id or its name."""

_KEY_TYPES = frozenset({
    "ssh-rsa", "ssh-dss", "ssh-ed25519", "ecdsa-sha2-nistp256", "ecdsa-sha2-nistp384",
    "ecdsa-sha2-nistp521", "sk-ssh-ed25519@openssh.com", "sk-ecdsa-sha2-nistp256@openssh.com",
})
_KEY_LINE = re.compile(
    r"^(?P<type>[a-z0-9@.-]+) (?P<blob>[A-Za-z0-9+/]+={0,2})(?: [^\x00-\x1f\x7f]*)?$")


def _ssh_public_key(value: str) -> str:
    """Accept one OpenSSH public key line whose blob names the same key type."""
    line = value.strip()
    match = _KEY_LINE.match(line)
    if match is None or match["type"] not in _KEY_TYPES:
        raise ValueError("must be an OpenSSH public key line: '<type> <base64> [comment]'")
    try:
        blob = base64.b64decode(match["blob"], validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("the key's base64 part does not decode") from None
    # The blob starts with the key type as an SSH string (4-byte big-endian length + bytes).
    if len(blob) < 4:
        raise ValueError("the key blob is too short")
    (length,) = struct.unpack(">I", blob[:4])
    if blob[4:4 + length] != match["type"].encode():
        raise ValueError("the key blob does not match its type")
    return line


def _user_data(value: str) -> str:
    """Accept base64 or plain text up to 64 KiB of content; no NUL characters."""
    if "\x00" in value:
        raise ValueError("must not contain NUL characters")
    try:
        size = len(base64.b64decode(value, validate=True))
    except (binascii.Error, ValueError):
        size = len(value.encode())  # plain text
    if size > MAX_USER_DATA_BYTES:
        raise ValueError(f"must be at most {MAX_USER_DATA_BYTES} bytes after decoding")
    return value


SshPublicKey = Annotated[str, StringConstraints(min_length=1, max_length=16384),
                         AfterValidator(_ssh_public_key)]
UserData = Annotated[str, StringConstraints(max_length=MAX_USER_DATA_BYTES * 4 // 3 + 4),
                     AfterValidator(_user_data)]


class ServerCreate(BaseModel):
    """A new server: a name, a flavor and an image (each by id or name), and options."""

    model_config = STRICT
    name: Name
    flavor: Ref
    image: Ref
    user_data: UserData | None = Field(
        default=None, description="cloud-init user data, base64 or plain text, <= 64 KiB")
    key_data: SshPublicKey | None = Field(default=None, description="an OpenSSH public key")
    key_name: Name | None = Field(default=None, description="one of the caller's key pairs "
                                  "(instead of key_data)")
    server_group: Ref | None = Field(default=None, description="own project's group (id)")
    availability_zone: ShortName | None = None


class StartAction(BaseModel):
    """Power a SHUTOFF server on."""

    model_config = STRICT
    action: Literal["start"]


class StopAction(BaseModel):
    """Power an ACTIVE server off."""

    model_config = STRICT
    action: Literal["stop"]


class RebootAction(BaseModel):
    """Reboot an ACTIVE server: soft (ACPI) or hard (reset); hard may override a soft one."""

    model_config = STRICT
    action: Literal["reboot"]
    type: Literal["soft", "hard"] = "soft"


class ResizeAction(BaseModel):
    """Give a SHUTOFF server another flavor (id or name), on the same host; disks never shrink."""

    model_config = STRICT
    action: Literal["resize"]
    flavor: Ref


class PauseAction(BaseModel):
    """Freeze an ACTIVE server's vCPUs; its memory stays allocated (and billed)."""

    model_config = STRICT
    action: Literal["pause"]


class UnpauseAction(BaseModel):
    """Let a PAUSED server's vCPUs run again, where they stopped (same boot)."""

    model_config = STRICT
    action: Literal["unpause"]


class MigrateAction(BaseModel):
    """Move an ACTIVE or SHUTOFF server to another host (cold: stopped, moved, started again
    if it was ACTIVE; ``live``: an ACTIVE server moves while it runs). ``host`` (admin only)
    names the destination; every filter still applies."""

    model_config = STRICT
    action: Literal["migrate"]
    host: Ref | None = Field(default=None, description="destination host id or name (admin)")
    live: bool = Field(default=False, description="live migration (ACTIVE servers only)")


ServerAction = Annotated[
    StartAction | StopAction | RebootAction | ResizeAction | PauseAction | UnpauseAction
    | MigrateAction,
    Field(discriminator="action")]


class FlavorRef(BaseModel):
    """The flavor a server was built from, with the sizes copied at create time."""

    id: str
    name: str | None
    vcpus: int
    ram_mb: int
    disk_gb: int


class ImageRef(BaseModel):
    """The image a server was built from."""

    id: str
    name: str | None


class Fault(BaseModel):
    """Why a server is in ERROR."""

    code: str
    message: str


class ServerOut(BaseModel):
    """A server as its project sees it (``host`` is shown to admins only)."""

    id: str
    name: str
    project_id: str
    user_id: str
    status: str
    task_state: str | None
    power_state: str | None
    flavor: FlavorRef
    image: ImageRef
    host: str | None
    availability_zone: str | None
    server_group_id: str | None
    addresses: list[Any]
    fault: Fault | None
    created_at: datetime
    updated_at: datetime


class ServerList(BaseModel):
    """One page of servers; pass ``next_marker`` as ``marker`` for the next (null: last page)."""

    servers: list[ServerOut]
    next_marker: str | None


class EventOut(BaseModel):
    """One request or state change of a server."""

    id: str
    action: str
    user_id: str | None
    request_id: str | None
    result: str
    message: str
    details: dict[str, Any]
    created_at: datetime


class EventList(BaseModel):
    """A page of a server's events, oldest first; ``next_marker`` (None: last page) is the
    ``marker`` of the next page."""

    events: list[EventOut]
    next_marker: str | None = None
