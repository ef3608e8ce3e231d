"""Base image cache (streamed, verified, atomic) and qcow2 overlays made by qemu-img."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from compute_agent.host_files import qemu_gid
from compute_agent.imagecache import (
    GIB,
    ChecksumMismatch,
    DiskTooSmall,
    ImageCache,
    ImageError,
    backing_file,
    create_overlay,
    grow_overlay,
    image_info,
    prepare_instance_files,
    virtual_size,
)
from compute_agent.seed import read_seed
from compute_agent.spec import InstancePaths, SpecError
from tests.compute_agent.factories import make_spec

MIB = 1024**2


def chunks(data: bytes, size: int = 7) -> Iterator[bytes]:
    for i in range(0, len(data), size):
        yield data[i:i + size]


def make_image(path: Path, fmt: str, size: str) -> Path:
    subprocess.run(["qemu-img", "create", "-q", "-f", fmt, str(path), size], check=True)
    return path


def test_store_streams_verifies_and_publishes_a_readable_file(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "images")
    image_id = str(uuid.uuid4())
    data = b"kernel bytes " * 1000

    path = cache.store(image_id, chunks(data), hashlib.sha256(data).hexdigest())

    assert path == cache.path(image_id) and cache.has(image_id)
    assert path.read_bytes() == data
    assert path.stat().st_mode & 0o777 == 0o640
    assert [p.name for p in (tmp_path / "images").iterdir()] == [image_id]


def test_checksum_mismatch_leaves_nothing_behind(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "images")
    image_id = str(uuid.uuid4())

    with pytest.raises(ChecksumMismatch):
        cache.store(image_id, chunks(b"tampered"), hashlib.sha256(b"original").hexdigest())

    assert not cache.has(image_id)
    assert list((tmp_path / "images").iterdir()) == []


def test_interrupted_download_leaves_nothing_behind(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path / "images")
    image_id = str(uuid.uuid4())

    def broken() -> Iterator[bytes]:
        yield b"first half"
        raise ConnectionError("API went away")

    with pytest.raises(ConnectionError):
        cache.store(image_id, broken(), "0" * 64)
    assert not cache.has(image_id)
    assert list((tmp_path / "images").iterdir()) == []


def test_leftover_partial_files_are_cleaned_up(tmp_path: Path) -> None:
    cache = ImageCache(tmp_path)
    (tmp_path / f".{uuid.uuid4()}.abc.part").write_bytes(b"x")
    assert cache.cleanup_partial() == 1
    assert list(tmp_path.iterdir()) == []


@pytest.mark.parametrize("bad", ["../etc/passwd", "x", "/abs", ""])
def test_image_ids_must_be_uuids(tmp_path: Path, bad: str) -> None:
    with pytest.raises(SpecError):
        ImageCache(tmp_path).path(bad)


@pytest.mark.parametrize("fmt", ["qcow2", "raw"])
def test_overlay_has_explicit_backing_format_and_flavor_size(tmp_path: Path, fmt: str) -> None:
    base = make_image(tmp_path / "base", fmt, "64M")
    overlay = tmp_path / "disk.qcow2"

    create_overlay(base, fmt, overlay, size_gb=2)  # type: ignore[arg-type]

    assert image_info(overlay, "qcow2")["format"] == "qcow2"
    assert backing_file(overlay) == (str(base), fmt)
    assert virtual_size(overlay, "qcow2") == 2 * GIB
    assert [p.name for p in tmp_path.iterdir() if p.name.endswith(".tmp")] == []


def test_disk_size_zero_means_the_image_size(tmp_path: Path) -> None:
    base = make_image(tmp_path / "base.qcow2", "qcow2", "64M")
    create_overlay(base, "qcow2", tmp_path / "disk.qcow2", size_gb=0)
    assert virtual_size(tmp_path / "disk.qcow2", "qcow2") == 64 * MIB


def test_disk_smaller_than_the_image_is_refused(tmp_path: Path) -> None:
    base = make_image(tmp_path / "base.qcow2", "qcow2", "2G")
    with pytest.raises(DiskTooSmall):
        create_overlay(base, "qcow2", tmp_path / "disk.qcow2", size_gb=1)
    assert not (tmp_path / "disk.qcow2").exists()


def test_resize_grows_and_never_shrinks(tmp_path: Path) -> None:
    base = make_image(tmp_path / "base.qcow2", "qcow2", "64M")
    overlay = tmp_path / "disk.qcow2"
    create_overlay(base, "qcow2", overlay, size_gb=1)

    assert grow_overlay(overlay, 3) is True
    assert virtual_size(overlay, "qcow2") == 3 * GIB
    assert grow_overlay(overlay, 3) is False
    with pytest.raises(DiskTooSmall):
        grow_overlay(overlay, 2)
    assert virtual_size(overlay, "qcow2") == 3 * GIB
    assert backing_file(overlay) == (str(base), "qcow2")


def test_prepare_instance_files_is_idempotent_and_keeps_the_disk(tmp_path: Path) -> None:
    base = make_image(tmp_path / "base.qcow2", "qcow2", "64M")
    spec = make_spec(image_path=base, disk_gb=1)
    paths = InstancePaths(tmp_path / "instances", spec.server_id)

    prepare_instance_files(spec, paths)
    inode = paths.disk.stat().st_ino
    prepare_instance_files(spec, paths)  # e.g. after an agent restart mid-build

    assert paths.disk.stat().st_ino == inode  # the guest's disk was not recreated
    assert backing_file(paths.disk) == (str(base), "qcow2")
    assert read_seed(paths.seed)[0] == "cidata"
    assert sorted(p.name for p in paths.directory.iterdir()) == \
        ["console.log", "disk.qcow2", "seed.iso"]

    bigger = make_spec(server_id=spec.server_id, image_path=base, disk_gb=2)
    prepare_instance_files(bigger, paths)
    assert virtual_size(paths.disk, "qcow2") == 2 * GIB


def test_a_raw_image_holding_a_qcow2_header_is_read_as_raw(tmp_path: Path) -> None:
    # A real qcow2 file of 1 GiB virtual size, declared raw: probing would read it as qcow2
    # (its 1 GiB, and any backing file it names); with -f raw it is its own bytes.
    base = make_image(tmp_path / "base", "qcow2", "1G")
    overlay = tmp_path / "disk.qcow2"
    create_overlay(base, "raw", overlay, size_gb=0)
    # Its own bytes, rounded up to whole 512-byte sectors.
    sectors = -(-base.stat().st_size // 512) * 512
    assert virtual_size(overlay, "qcow2") == virtual_size(base, "raw") == sectors < GIB
    assert backing_file(overlay) == (str(base), "raw")


def test_qemu_img_that_blocks_times_out(tmp_path: Path) -> None:
    fifo = tmp_path / "fifo"
    os.mkfifo(fifo)  # opening a FIFO blocks until a writer comes: qemu-img would hang
    with pytest.raises(ImageError, match="timed out after 1 s"):
        image_info(fifo, "raw", timeout=1.0)


def test_instance_files_are_readable_by_qemu_only(tmp_path: Path) -> None:
    base = make_image(tmp_path / "base.qcow2", "qcow2", "64M")
    spec = make_spec(image_path=base, disk_gb=1)
    paths = InstancePaths(tmp_path / "instances", spec.server_id)
    prepare_instance_files(spec, paths)
    cache = ImageCache(tmp_path / "images")
    cached = cache.store(str(uuid.uuid4()), chunks(b"x"), hashlib.sha256(b"x").hexdigest())

    gid = qemu_gid()
    assert gid is not None  # this machine runs libvirt's QEMU driver
    for path in (paths.directory, cache.root):
        assert (stat.S_IMODE(path.stat().st_mode), path.stat().st_gid) == (0o750, gid), path
    for path in (paths.disk, paths.seed, paths.console_log, cached):
        assert (stat.S_IMODE(path.stat().st_mode), path.stat().st_gid) == (0o640, gid), path


def cache_with(tmp_path: Path, sizes_by_age: list[int]) -> tuple[ImageCache, list[str]]:
    """A cache holding images of these sizes, the first one used longest ago."""
    cache = ImageCache(tmp_path / "images")
    ids = []
    for age, size in enumerate(sizes_by_age):
        image_id = str(uuid.uuid4())
        data = b"i" * size
        path = cache.store(image_id, chunks(data, 4096), hashlib.sha256(data).hexdigest())
        used = 1_000_000 + age * 60
        os.utime(path, (used, used))
        ids.append(image_id)
    return cache, ids


def test_eviction_removes_least_recently_used_until_under_the_limit(tmp_path: Path) -> None:
    cache, (a, b, c, d) = cache_with(tmp_path, [300, 300, 300, 300])
    (cache.root / f".{a}.x.part").write_bytes(b"p" * 5000)  # a download in progress: not counted

    assert cache.evict(700, in_use=set()) == [a, b]  # 1200 -> 600 bytes, oldest first
    assert [cache.has(i) for i in (a, b, c, d)] == [False, False, True, True]
    assert cache.evict(700, in_use=set()) == []  # under the limit: nothing more


def test_eviction_never_removes_an_image_in_use(tmp_path: Path) -> None:
    cache, (a, b, c) = cache_with(tmp_path, [500, 500, 500])

    assert cache.evict(0, in_use={a, c.upper()}) == [b]
    assert [cache.has(i) for i in (a, b, c)] == [True, False, True]


def test_using_an_image_makes_it_the_most_recent(tmp_path: Path) -> None:
    cache, (a, b, c) = cache_with(tmp_path, [400, 400, 400])
    assert cache.use(a) == cache.path(a)
    assert cache.use(str(uuid.uuid4())) is None  # not cached

    assert cache.evict(800, in_use=set()) == [b]
    assert [cache.has(i) for i in (a, b, c)] == [True, False, True]
