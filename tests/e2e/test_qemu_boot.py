"""A real guest boots under QEMU (TCG) through libvirtd with the adapter, seed and overlay.

Builds the tiny guest image (cached by deploy/build-guest-image.sh), caches it through
``ImageCache.store``, creates the overlay and the NoCloud seed, then drives the whole
lifecycle on ``qemu:///system`` with virt type ``qemu`` and no NIC: boot -> the console shows
the hostname and instance-id from the seed -> graceful stop -> start -> soft reboot ->
destroy + undefine -> domain and files gone. No timing thresholds: waits are bounded only so a
broken boot fails instead of hanging.
"""

from __future__ import annotations

import fcntl
import hashlib
import shutil
import stat
import subprocess
import time
import uuid
from collections.abc import Iterator
from pathlib import Path

import pytest

from compute_agent.host_files import qemu_gid
from compute_agent.hypervisor import Hypervisor, HypervisorError
from compute_agent.imagecache import ImageCache, prepare_instance_files
from compute_agent.spec import InstancePaths, ServerSpec

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

REPO = Path(__file__).resolve().parents[2]
# QEMU runs as libvirt-qemu: its files must sit under world-traversable directories, which
# pytest's tmp_path (under a 0700 directory) is not.
TEST_ROOT = Path("/var/lib/minicloud-test")
# One directory per version of the image builder, so worktrees with different guests never
# rebuild each other's image under a running test.
GUEST_IMAGE = TEST_ROOT / ("guest-image-" + hashlib.sha256(
    (REPO / "deploy" / "guest_initramfs.py").read_bytes()
    + (REPO / "deploy" / "build-guest-image.sh").read_bytes()).hexdigest()[:12])
BOOT_WAIT = 120.0


def build_guest_image() -> Path:
    """Build (once) and return the guest image directory.

    The script writes into the directory in place: an flock beside it keeps a second pytest
    process (deploy/test.sh runs two at once, other worktrees share the directory) from
    reading it half-written or rebuilding it under a running guest.
    """
    TEST_ROOT.mkdir(mode=0o755, exist_ok=True)
    with open(GUEST_IMAGE.with_name(GUEST_IMAGE.name + ".lock"), "a") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)
        subprocess.run([str(REPO / "deploy" / "build-guest-image.sh"), str(GUEST_IMAGE)],
                       check=True, stdout=subprocess.DEVNULL)
    return GUEST_IMAGE


def cache_file(cache: ImageCache, path: Path) -> tuple[str, Path]:
    """Put a file into the image cache through the streaming, verified download path."""
    data = path.read_bytes()
    image_id = str(uuid.uuid4())
    chunks = (data[i:i + 65536] for i in range(0, len(data), 65536))
    return image_id, cache.store(image_id, chunks, hashlib.sha256(data).hexdigest())


def wait_for(paths: InstancePaths, text: str, count: int) -> str:
    """Wait (bounded) until ``text`` occurs ``count`` times in the console log."""
    deadline = time.monotonic() + BOOT_WAIT
    log = ""
    while time.monotonic() < deadline:
        if paths.console_log.exists():
            log = paths.console_log.read_text(errors="replace")
            if log.count(text) >= count:
                return log
        time.sleep(0.25)
    pytest.fail(f"console never showed {text!r} x{count} within {BOOT_WAIT}s:\n{log[-3000:]}")


@pytest.fixture
def hv() -> Iterator[Hypervisor]:
    try:
        h = Hypervisor("qemu:///system")
    except HypervisorError as exc:
        pytest.skip(f"libvirtd is not reachable on qemu:///system: {exc}")
    with h:
        yield h


@pytest.fixture
def workdir() -> Iterator[Path]:
    TEST_ROOT.mkdir(mode=0o755, exist_ok=True)
    TEST_ROOT.chmod(0o755)
    work = TEST_ROOT / f"run-{uuid.uuid4()}"
    work.mkdir(mode=0o755)
    yield work
    shutil.rmtree(work, ignore_errors=True)


def test_guest_boots_reads_its_seed_and_follows_the_lifecycle(hv: Hypervisor,
                                                              workdir: Path) -> None:
    image = build_guest_image()
    cache = ImageCache(workdir / "images")
    disk_id, disk = cache_file(cache, image / "disk.qcow2")
    _, kernel = cache_file(cache, image / "vmlinuz")
    _, initrd = cache_file(cache, image / "initrd.img")

    spec = ServerSpec(
        server_id=str(uuid.uuid4()), project_id=str(uuid.uuid4()),
        name="e2e <guest> & 'q' ../x", vcpus=1, ram_mb=256, disk_gb=1,
        image_path=disk, image_format="qcow2", image_id=disk_id, flavor_name="tiny",
        kernel_path=kernel, initrd_path=initrd,
        kernel_cmdline=(image / "cmdline").read_text().strip(),
        user_data="#cloud-config\n{}\n", network=None, virt_type="qemu")
    paths = InstancePaths(workdir / "instances", spec.server_id)
    try:
        prepare_instance_files(spec, paths)  # directory, overlay, seed, console log
        hv.define(spec, paths)
        assert hv.observed(spec.server_id) == "shutoff"

        hv.start(spec.server_id)
        assert hv.observed(spec.server_id) == "running"
        expected = f"minicloud-guest: hostname={spec.hostname} instance-id={spec.server_id}"
        wait_for(paths, expected, 1)
        assert spec.hostname == "e2e-guest-q-x"
        wait_for(paths, "user-data 17 bytes, first line: #cloud-config", 1)
        assert expected in hv.console_tail(spec.server_id, max_bytes=8192)
        # The guest booted from files other local users cannot read. (While it runs, libvirt
        # hands the disk and seed to its QEMU user; the directory and log keep QEMU's group.)
        modes = {p.name: stat.S_IMODE(p.stat().st_mode)
                 for p in (paths.directory, paths.disk, paths.seed, paths.console_log)}
        assert modes == {paths.directory.name: 0o750, "disk.qcow2": 0o640, "seed.iso": 0o640,
                         "console.log": 0o640}
        assert paths.directory.stat().st_gid == paths.console_log.stat().st_gid == qemu_gid()

        # The guest handles the ACPI power button, so the stop is graceful.
        wait_for(paths, "minicloud-guest: ready", 1)
        assert hv.shutdown(spec.server_id, timeout=60) is True
        assert hv.observed(spec.server_id) == "shutoff"

        hv.start(spec.server_id)
        assert hv.observed(spec.server_id) == "running"
        wait_for(paths, "minicloud-guest: ready", 2)

        hv.reboot(spec.server_id, hard=False)
        wait_for(paths, expected, 3)
        assert hv.observed(spec.server_id) == "running"

        assert hv.destroy_and_undefine(spec.server_id) is True
        paths.remove()
        assert hv.observed(spec.server_id) == "absent"
        assert spec.server_id not in hv.list_managed()
        assert not paths.directory.exists()
        assert cache.has(disk_id)  # the shared base image stays cached
    finally:
        hv.destroy_and_undefine(spec.server_id)
        paths.remove()
