"""The API's relay of a cold migration's files (disk overlay and seed) between two agents.

The source's agent uploads each file with its sha256; the relay checks it while writing and
keeps the digest next to the file; the destination's agent downloads it and checks the digest
again. Files live under ``<data_dir>/migrations/<migration id>/`` only while the migration is
open: the service discards them when it ends.

Why a relay rather than agent-to-agent copies: agents only ever speak to the API with their
own host credential (they open no port to each other), so the API is the one place that can
check that exactly the migration's two hosts touch the files, and nothing new has to be
authenticated or reachable between hosts. The price is each file crossing the network twice
and staying on the API's disk for the duration of the move (docs/operations.md).
"""

from __future__ import annotations

import hashlib
import os
import shutil
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Literal

from api.config import Settings
from api.errors import DomainError

FileName = Literal["disk", "seed"]
FILES: tuple[FileName, ...] = ("disk", "seed")


class ChecksumMismatch(DomainError):
    """The received bytes do not match the sha256 the sender announced."""

    status, code, title = 400, "migration_file_checksum", "Checksum mismatch"


def directory(settings: Settings, migration_id: str) -> Path:
    """Where one migration's files are kept."""
    return Path(settings.data_dir) / "migrations" / migration_id


def path(settings: Settings, migration_id: str, name: FileName) -> Path:
    """The stored file ``name`` of a migration."""
    return directory(settings, migration_id) / name


def digest_of(settings: Settings, migration_id: str, name: FileName) -> str | None:
    """The sha256 recorded for a stored file; None when the file is not (fully) there."""
    try:
        return (directory(settings, migration_id) / f"{name}.sha256").read_text().strip()
    except FileNotFoundError:
        return None


async def receive(settings: Settings, migration_id: str, name: FileName,
                  chunks: AsyncIterator[bytes], sha256: str) -> int:
    """Write an uploaded file (temporary name, renamed once its digest matched).

    Returns its size. Raises ChecksumMismatch (400 ``migration_file_checksum``); nothing is
    kept then.
    """
    folder = directory(settings, migration_id)
    folder.mkdir(parents=True, exist_ok=True)
    tmp = folder / f"{name}.part"
    digest = hashlib.sha256()
    size = 0
    with open(tmp, "wb") as out:
        async for chunk in chunks:
            digest.update(chunk)
            size += len(chunk)
            out.write(chunk)
        out.flush()
        os.fsync(out.fileno())
    if digest.hexdigest() != sha256.lower():
        tmp.unlink(missing_ok=True)
        raise ChecksumMismatch(f"The {name} received ({size} bytes) does not match its sha256.")
    tmp.replace(folder / name)
    (folder / f"{name}.sha256").write_text(digest.hexdigest())
    return size


def complete(settings: Settings, migration_id: str) -> bool:
    """True when every file of the migration arrived whole."""
    return all(digest_of(settings, migration_id, n) is not None for n in FILES)


def discard(settings: Settings, migration_id: str) -> None:
    """Remove a migration's files (it ended)."""
    shutil.rmtree(directory(settings, migration_id), ignore_errors=True)


def leftovers(settings: Settings) -> list[str]:
    """Ids of the migrations that have files in the relay."""
    root = Path(settings.data_dir) / "migrations"
    try:
        return sorted(p.name for p in root.iterdir() if p.is_dir())
    except FileNotFoundError:
        return []
