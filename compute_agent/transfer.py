"""A cold migration's files on the agent side: send them to the API's relay (source), fetch
them and put them in place (destination).

The source's overlay names its base image by the source's cache path; the destination
rebases it (``qemu-img rebase -u``: only the header changes) onto its own copy of the same
image, verified by the same sha256 when it was downloaded.
"""

from __future__ import annotations

import hashlib
from pathlib import Path

from compute_agent import host_files
from compute_agent.client import AgentApiError, AgentClient
from compute_agent.imagecache import ImageError, rebase_overlay
from compute_agent.spec import ImageFormat, InstancePaths


class TransferError(Exception):
    """A relayed file is missing, corrupt or unusable."""


def sha256_of(path: Path) -> str:
    """The sha256 of a file, read in 1 MiB chunks."""
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(1 << 20):
            digest.update(chunk)
    return digest.hexdigest()


def send(client: AgentClient, paths: InstancePaths) -> int:
    """Upload the shut-off server's overlay and seed; returns the bytes sent.

    Raises:
        TransferError: a file is missing.
        AgentApiError: the API refuses or cannot be reached.
    """
    sent = 0
    for name, path in (("disk", paths.disk), ("seed", paths.seed)):
        if not path.is_file():
            raise TransferError(f"{path} is missing")
        client.put_migration_file(paths.server_id, name, path, sha256_of(path))
        sent += path.stat().st_size
    return sent


def receive(client: AgentClient, paths: InstancePaths, base: Path,
            base_format: ImageFormat) -> None:
    """Replace the server's freshly built overlay and seed with the relayed ones.

    Each file is fetched under a temporary name, checked against its sha256 and renamed, so
    an interrupted fetch never leaves a half file under the final name.

    Raises:
        TransferError: a digest does not match, or qemu-img cannot rebase the overlay.
        AgentApiError: the API refuses (the migration ended meanwhile) or cannot be reached.
    """
    for name, final in (("disk", paths.disk), ("seed", paths.seed)):
        tmp = final.with_name(final.name + ".incoming")
        tmp.unlink(missing_ok=True)
        expected = client.get_migration_file(paths.server_id, name, tmp)
        if sha256_of(tmp) != expected.lower():
            tmp.unlink(missing_ok=True)
            raise TransferError(f"the relayed {name} does not match its sha256")
        if name == "disk":
            try:
                rebase_overlay(tmp, base, base_format)
            except ImageError as exc:
                tmp.unlink(missing_ok=True)
                raise TransferError(str(exc)) from exc
        host_files.share_file(tmp)
        tmp.replace(final)


__all__ = ["AgentApiError", "TransferError", "receive", "send", "sha256_of"]
