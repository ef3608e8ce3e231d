"""A server's serial console tail, as its agent last shipped it (files, not the database)."""

from __future__ import annotations

import contextlib
import os
import tempfile
import uuid
from pathlib import Path

from api.config import Settings
from api.errors import NotFound


def console_path(settings: Settings, server_id: str) -> Path:
    """The console file of a server, named only from its parsed UUID; raises NotFound."""
    try:
        name = str(uuid.UUID(server_id))
    except ValueError:
        raise NotFound("No such server.", code="server_not_found") from None
    return settings.console_dir / f"{name}.log"


def write_console(settings: Settings, server_id: str, data: bytes) -> int:
    """Replace the stored console tail (last ``console_max_bytes``) atomically; returns size."""
    path = console_path(settings, server_id)
    path.parent.mkdir(parents=True, exist_ok=True)
    data = data[-settings.console_max_bytes:]
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=".console-")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return len(data)


def read_console(settings: Settings, server_id: str, lines: int | None) -> str:
    """The stored tail as text, optionally only its last ``lines`` lines ("" if none yet)."""
    try:
        raw = console_path(settings, server_id).read_bytes()
    except FileNotFoundError:
        return ""
    text = raw.decode("utf-8", errors="replace")
    if lines is not None:
        text = "".join(text.splitlines(keepends=True)[-lines:]) if lines else ""
    return text
