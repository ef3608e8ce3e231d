"""Per-host base image cache and per-server qcow2 overlays (``qemu-img``).

Base images are stored once per host under ``<cache>/<image_id>``, written by a streaming,
sha256-verified, atomic download. Each server gets a qcow2 overlay backed by its base image
with the backing format given explicitly (``-F``), grown to the flavor's disk size. ``qemu-img``
is always run with an argv list, never through a shell, always with the declared format
(``-f``: a file is never probed, so a raw image holding a qcow2 header stays raw) and always
with a timeout (a file that blocks, e.g. a FIFO, cannot hang the agent).

Files are shared with QEMU only (``host_files``): directories 0750, images and disks 0640.
Cached images are evicted least recently used first once the cache outgrows a configured size,
never while a server on the host uses them (``ImageCache.evict``).
"""

from __future__ import annotations

import hashlib
import json
import os
import subprocess
import tempfile
from collections.abc import Iterable, Set
from pathlib import Path

from compute_agent import host_files
from compute_agent.seed import write_seed
from compute_agent.spec import ImageFormat, InstancePaths, ServerSpec, canonical_uuid

GIB = 1024**3
# Bound of one qemu-img run: create, resize and info touch metadata only, so this is generous.
QEMU_IMG_TIMEOUT = 120.0


class ImageError(Exception):
    """An image or overlay operation failed."""


class ChecksumMismatch(ImageError):
    """A downloaded image does not match its expected sha256."""


class DiskTooSmall(ImageError):
    """The requested disk is smaller than the image or the existing overlay (disks never shrink)."""


def _qemu_img(*args: str, timeout: float = QEMU_IMG_TIMEOUT) -> str:
    """Run ``qemu-img`` with an argv list and return its stdout.

    Raises:
        ImageError: qemu-img is missing, exits non-zero or runs longer than ``timeout`` s.
    """
    try:
        done = subprocess.run(["qemu-img", *args], capture_output=True, text=True, check=False,
                              timeout=timeout)
    except subprocess.TimeoutExpired as exc:
        raise ImageError(f"qemu-img {args[0]} timed out after {timeout:g} s") from exc
    except OSError as exc:
        raise ImageError(f"cannot run qemu-img: {exc}") from exc
    if done.returncode != 0:
        raise ImageError(f"qemu-img {args[0]} failed: {done.stderr.strip()}")
    return done.stdout


def image_info(path: Path, fmt: ImageFormat, *,
               timeout: float = QEMU_IMG_TIMEOUT) -> dict[str, object]:
    """``qemu-img info -f <fmt> --output=json`` of ``path``: read as ``fmt``, never probed.

    Raises:
        ImageError: the file cannot be read as a ``fmt`` image, or qemu-img timed out.
    """
    info: dict[str, object] = json.loads(
        _qemu_img("info", "-f", fmt, "--output=json", str(path), timeout=timeout))
    return info


def virtual_size(path: Path, fmt: ImageFormat) -> int:
    """Virtual disk size in bytes of ``path`` read as a ``fmt`` image.

    Raises:
        ImageError: the file cannot be read as a disk image.
    """
    size = image_info(path, fmt).get("virtual-size")
    if not isinstance(size, int):
        raise ImageError(f"no virtual size for {path}")
    return size


class ImageCache:
    """Base images of one host, one file per image id under ``root``."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def path(self, image_id: str) -> Path:
        """Where image ``image_id`` is (or would be) cached.

        Raises:
            SpecError: ``image_id`` is not a canonical UUID.
        """
        return self.root / canonical_uuid(image_id.lower(), "image_id")

    def has(self, image_id: str) -> bool:
        """True when the image is fully cached (downloads land by atomic rename)."""
        return self.path(image_id).is_file()

    def use(self, image_id: str) -> Path | None:
        """The cached image's path, marked as just used (for eviction), or None when absent.

        Raises:
            SpecError: ``image_id`` is not a canonical UUID.
        """
        path = self.path(image_id)
        try:
            os.utime(path)  # the modification time is the last use: atime is often off
        except FileNotFoundError:
            return None
        return path

    def evict(self, max_bytes: int, in_use: Set[str]) -> list[str]:
        """Delete least recently used images until the cache holds at most ``max_bytes``.

        Images in ``in_use`` (ids used by servers on this host, their kernels and ramdisks)
        are never deleted, so the cache may stay above the limit. Returns the ids removed.
        """
        if not self.root.is_dir():
            return []
        keep = {i.lower() for i in in_use}
        cached: list[tuple[float, int, Path]] = []
        for p in self.root.iterdir():
            try:
                if p.name.startswith(".") or canonical_uuid(p.name) != p.name:
                    continue
                st = p.stat()
            except (ValueError, FileNotFoundError):
                continue
            cached.append((st.st_mtime, st.st_size, p))
        total = sum(size for _, size, _ in cached)
        removed: list[str] = []
        for _, size, p in sorted(cached, key=lambda c: c[0]):
            if total <= max_bytes:
                break
            if p.name in keep:
                continue
            p.unlink(missing_ok=True)
            total -= size
            removed.append(p.name)
        return removed

    def store(self, image_id: str, chunks: Iterable[bytes], expected_sha256: str) -> Path:
        """Stream ``chunks`` into the cache as ``image_id``, verifying sha256; return the path.

        Writes to a temporary file in the cache directory, fsyncs, checks the digest, then
        renames atomically, so a reader never sees a partial image and an interrupted download
        leaves only a temp file (removed here on error). The file is mode 0640 with QEMU's
        group, so QEMU can read it and other local users cannot. Storing an already cached
        image re-downloads it.

        Raises:
            ChecksumMismatch: the content's sha256 differs from ``expected_sha256``.
            SpecError: ``image_id`` is not a canonical UUID.
            OSError: the file cannot be written.
        """
        dest = self.path(image_id)
        self.root.mkdir(parents=True, exist_ok=True)
        host_files.share_dir(self.root)
        digest = hashlib.sha256()
        fd, tmp_name = tempfile.mkstemp(dir=self.root, prefix=f".{dest.name}.", suffix=".part")
        tmp = Path(tmp_name)
        try:
            with os.fdopen(fd, "wb") as out:
                for chunk in chunks:
                    digest.update(chunk)
                    out.write(chunk)
                out.flush()
                os.fsync(out.fileno())
            if digest.hexdigest() != expected_sha256.lower():
                raise ChecksumMismatch(
                    f"image {image_id}: sha256 {digest.hexdigest()} != {expected_sha256}")
            host_files.share_file(tmp)
            tmp.replace(dest)
        except BaseException:
            tmp.unlink(missing_ok=True)
            raise
        return dest

    def remove(self, image_id: str) -> None:
        """Delete a cached image; missing is fine.

        Raises:
            SpecError: ``image_id`` is not a canonical UUID.
        """
        self.path(image_id).unlink(missing_ok=True)

    def cleanup_partial(self) -> int:
        """Delete temp files left by interrupted downloads; return how many were removed."""
        removed = 0
        if self.root.is_dir():
            for p in self.root.glob(".*.part"):
                p.unlink(missing_ok=True)
                removed += 1
        return removed


def create_overlay(base: Path, base_format: ImageFormat, overlay: Path, size_gb: int) -> None:
    """Create the qcow2 ``overlay`` backed by ``base`` with explicit backing format.

    ``size_gb`` 0 means the base image's own size. Built as ``overlay.tmp`` and renamed, so an
    interrupted build never leaves a half-made overlay under the final name; an existing
    overlay is replaced.

    Raises:
        DiskTooSmall: ``size_gb`` is smaller than the base image's virtual size.
        ImageError: qemu-img fails.
    """
    if base_format not in ("qcow2", "raw"):
        raise ImageError(f"unsupported base format {base_format!r}")
    base_size = virtual_size(base, base_format)
    size = size_gb * GIB if size_gb else base_size
    if size < base_size:
        raise DiskTooSmall(f"disk {size_gb} GiB is smaller than the image ({base_size} bytes)")
    create_overlay_bytes(base, base_format, overlay, size)


def create_overlay_bytes(base: Path, base_format: ImageFormat, overlay: Path,
                         size_bytes: int) -> None:
    """Create the empty qcow2 ``overlay`` backed by ``base``, exactly ``size_bytes`` large.

    Built as ``overlay.tmp`` and renamed; an existing overlay is replaced. (A live migration's
    destination needs the source disk's exact virtual size, which is not always whole GiB.)

    Raises:
        ImageError: qemu-img fails or ``base_format`` is not supported.
    """
    if base_format not in ("qcow2", "raw"):
        raise ImageError(f"unsupported base format {base_format!r}")
    tmp = overlay.with_name(overlay.name + ".tmp")
    tmp.unlink(missing_ok=True)
    _qemu_img("create", "-q", "-f", "qcow2", "-F", base_format, "-b", str(base), str(tmp),
              str(size_bytes))
    host_files.share_file(tmp)
    tmp.replace(overlay)


def grow_overlay(overlay: Path, size_gb: int) -> bool:
    """Grow ``overlay`` to ``size_gb`` GiB; return True when it grew, False when already that size.

    Raises:
        DiskTooSmall: ``size_gb`` is smaller than the overlay (disks never shrink).
        ImageError: qemu-img fails.
    """
    current = virtual_size(overlay, "qcow2")
    target = size_gb * GIB
    if target < current:
        raise DiskTooSmall(f"disk cannot shrink from {current} to {target} bytes")
    if target == current:
        return False
    _qemu_img("resize", "-q", "-f", "qcow2", str(overlay), str(target))
    return True


def rebase_overlay(overlay: Path, base: Path, base_format: ImageFormat) -> None:
    """Point ``overlay``'s header at ``base`` (``qemu-img rebase -u``: no data is copied; the
    caller guarantees ``base`` holds the same bytes as the old backing file).

    Raises:
        ImageError: qemu-img fails.
    """
    _qemu_img("rebase", "-q", "-u", "-f", "qcow2", "-F", base_format, "-b", str(base),
              str(overlay))


def backing_file(overlay: Path) -> tuple[str | None, str | None]:
    """(backing file, backing format) recorded in a qcow2 overlay's header.

    Raises:
        ImageError: the file cannot be read as a disk image.
    """
    info = image_info(overlay, "qcow2")
    bf = info.get("backing-filename")
    fmt = info.get("backing-filename-format")
    return (bf if isinstance(bf, str) else None, fmt if isinstance(fmt, str) else None)


def prepare_instance_files(spec: ServerSpec, paths: InstancePaths,
                           network_config: str | None = None) -> None:
    """Make a server's instance directory, overlay and seed ISO; safe to call again.

    The overlay is created only when missing (an existing one holds the guest's data and is
    complete, since overlays appear by atomic rename), then grown to ``spec.disk_gb`` if the
    flavor grew; the seed is rewritten every time (cheap, atomic). So an agent killed halfway
    through a build just calls this again.

    Raises:
        DiskTooSmall: the flavor disk is smaller than the image or the existing overlay.
        ImageError: qemu-img fails (e.g. the base image is missing or unreadable).
        OSError: files cannot be written.
    """
    paths.create()
    # The console log exists before the domain starts, so its mode is ours, not the logger's.
    if not paths.console_log.exists():
        paths.console_log.touch()
    host_files.share_file(paths.console_log)
    if not paths.disk.exists():
        create_overlay(spec.image_path, spec.image_format, paths.disk, spec.disk_gb)
    elif spec.disk_gb:
        grow_overlay(paths.disk, spec.disk_gb)
    write_seed(spec, paths.seed, network_config)
