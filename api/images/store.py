"""The on-disk image store: one file per image, named by the server-generated image id.

Uploads stream into a temporary file in the same directory (so the final rename is atomic on
one file system), hashing and counting as they go; no upload is ever held in memory.
"""

from __future__ import annotations

import errno
import hashlib
import os
import shutil
import tempfile
import uuid
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from pathlib import Path

from anyio import to_thread

from api.errors import Conflict, InsufficientStorage, InvalidInput, PayloadTooLarge
from api.images.formats import HEAD_BYTES

# Bytes handed to a worker thread per write: large enough that the thread hop is cheap, small
# enough to keep memory flat.
_WRITE_BATCH = 1024 * 1024
_TMP_PREFIX = ".upload-"
# Out of space (or of the file system's quota): the client's request was fine.
_NO_SPACE = (errno.ENOSPC, errno.EDQUOT)


def _out_of_space() -> InsufficientStorage:
    return InsufficientStorage("The image store is out of space; nothing was kept.",
                               code="insufficient_storage")


@dataclass(frozen=True)
class Received:
    """A fully received upload, still in its temporary file."""

    tmp_path: Path
    size: int
    sha256: str


class ImageStore:
    """Image files under one directory."""

    def __init__(self, root: Path) -> None:
        self.root = root

    def path(self, image_id: str) -> Path:
        """The file of an image; raises ValueError unless ``image_id`` is a canonical UUID.

        Only ids the server generated reach here; the check keeps a path from ever being
        built out of anything else.
        """
        if str(uuid.UUID(image_id)) != image_id:
            raise ValueError(f"not a canonical image id: {image_id!r}")
        return self.root / image_id

    async def receive(self, image_id: str, chunks: AsyncIterator[bytes], max_bytes: int,
                      check_head: Callable[[bytes], None],
                      check_size: Callable[[int], None] | None = None) -> Received:
        """Stream ``chunks`` into a temporary file; returns its size and sha256.

        ``check_head`` sees the first ``HEAD_BYTES`` (or the whole file if shorter) before
        the rest is accepted; ``check_size`` sees the running size after each chunk, before
        it is written. Raises PayloadTooLarge ``image_too_large`` past ``max_bytes``,
        InvalidInput ``image_empty`` for no bytes, InsufficientStorage when the file system
        is full, whatever ``check_head`` raises, or the client's disconnect; on any error the
        temporary file is gone.
        """
        self.path(image_id)
        try:
            self.root.mkdir(parents=True, exist_ok=True)
            fd, name = tempfile.mkstemp(prefix=f"{_TMP_PREFIX}{image_id}-", dir=self.root)
        except OSError as exc:
            if exc.errno in _NO_SPACE:
                raise _out_of_space() from None
            raise
        tmp = Path(name)
        digest = hashlib.sha256()
        size = 0
        head = b""
        head_checked = False
        batch = bytearray()

        def write(data: bytes) -> None:
            digest.update(data)
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]

        try:
            async for chunk in chunks:
                if not chunk:
                    continue
                size += len(chunk)
                if size > max_bytes:
                    raise PayloadTooLarge(
                        f"The image is larger than the limit of {max_bytes} bytes.",
                        code="image_too_large", limit=max_bytes)
                if check_size is not None:
                    check_size(size)
                if not head_checked:
                    head += chunk[:HEAD_BYTES - len(head)]
                    if len(head) >= HEAD_BYTES:
                        check_head(head)
                        head_checked = True
                batch += chunk
                if len(batch) >= _WRITE_BATCH:
                    data, batch = bytes(batch), bytearray()
                    await to_thread.run_sync(write, data)
            if size == 0:
                raise InvalidInput("The upload is empty.", code="image_empty")
            if not head_checked:
                check_head(head)
            if batch:
                await to_thread.run_sync(write, bytes(batch))
            await to_thread.run_sync(os.fsync, fd)
        except OSError as exc:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            if exc.errno in _NO_SPACE:
                raise _out_of_space() from None
            raise
        except BaseException:
            os.close(fd)
            tmp.unlink(missing_ok=True)
            raise
        os.close(fd)
        return Received(tmp, size, digest.hexdigest())

    def free_bytes(self) -> int:
        """Bytes free for uploads on the store's file system (the root made if missing)."""
        self.root.mkdir(parents=True, exist_ok=True)
        return shutil.disk_usage(self.root).free

    def publish(self, received: Received, image_id: str) -> Path:
        """Atomically move a received upload to the image's file.

        Raises Conflict ``image_deleted`` when a delete removed the temporary file meanwhile.
        """
        final = self.path(image_id)
        try:
            os.replace(received.tmp_path, final)
        except FileNotFoundError:
            raise Conflict("The image was deleted during the upload.",
                           code="image_deleted") from None
        return final

    def discard(self, received: Received) -> None:
        """Drop a received upload that will not be published."""
        received.tmp_path.unlink(missing_ok=True)

    def remove(self, image_id: str) -> None:
        """Delete an image's file and any upload of it in progress or left by a crash.

        An upload whose temporary file goes away fails at ``publish``.
        """
        self.path(image_id).unlink(missing_ok=True)
        for tmp in self.root.glob(f"{_TMP_PREFIX}{image_id}-*"):
            tmp.unlink(missing_ok=True)
