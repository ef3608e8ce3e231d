"""Fixtures of the end-to-end tests: independent libvirt daemons acting as separate hosts."""

from __future__ import annotations

import os
import shutil
import uuid
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from api.config import Settings
from compute_agent.hypervisor import Hypervisor, HypervisorError
from tests.e2e.guest_image import URI, GuestImage, upload_tiny_guest
from tests.e2e.libvirt_hosts import TEST_ROOT, LibvirtHost, LibvirtHosts
from tests.e2e.stack import ApiProcess
from tests.factories import Account


@pytest.fixture(scope="session")
def libvirt_host_pool() -> Iterator[LibvirtHosts]:
    """The session's pool of test libvirt hosts (``pool.get(n)`` starts them on demand).

    Each host is a root libvirtd in its own mount namespace (``tests/e2e/libvirt_hosts.py``);
    all are stopped and their directories removed when the session ends.
    """
    missing = [tool for tool in ("libvirtd", "virtlogd", "unshare") if shutil.which(tool) is None]
    if os.geteuid() != 0 or missing:
        pytest.skip("separate libvirt daemons need root and libvirtd, virtlogd, unshare "
                    f"(missing: {missing or 'root'})")
    pool = LibvirtHosts()
    try:
        yield pool
    finally:
        pool.close()


@pytest.fixture
def two_libvirt_hosts(libvirt_host_pool: LibvirtHosts) -> Iterator[list[LibvirtHost]]:
    """Two running test libvirt hosts [A, B] with no domains and empty agent data directories.

    After the test, every domain on them is destroyed and undefined, a daemon the test killed
    is restarted, and the data directories are emptied.
    """
    hosts = libvirt_host_pool.get(2)
    libvirt_host_pool.clean()
    yield hosts
    libvirt_host_pool.clean()


@pytest.fixture(scope="module")
def api(live_api: Callable[[int], list[str]]) -> str:
    """A ``minicloud-api`` process of the module's own (a module may pick another)."""
    return live_api(1)[0]


@pytest.fixture(scope="module")
def hv() -> Iterator[Hypervisor]:
    """The machine's own libvirtd (``URI``), where the real guests boot; skips without it."""
    try:
        h = Hypervisor(URI)
    except HypervisorError as exc:
        pytest.skip(f"libvirtd is not reachable on {URI}: {exc}")
    with h:
        yield h


@pytest.fixture
def home(request: pytest.FixtureRequest) -> Iterator[Path]:
    """A fresh agent home directory for a real guest, removed after the test."""
    # QEMU runs as libvirt-qemu: its files must sit under world-traversable directories, which
    # pytest's tmp_path (under a 0700 directory) is not.
    TEST_ROOT.mkdir(mode=0o755, exist_ok=True)
    path = TEST_ROOT / f"{request.module.__name__.rsplit('.', 1)[-1]}-{uuid.uuid4()}"
    path.mkdir(mode=0o755)
    yield path
    shutil.rmtree(path, ignore_errors=True)


@pytest.fixture(scope="module")
def guest(api: str, member: Account, hv: Hypervisor) -> GuestImage:
    """The tiny guest uploaded through the module's ``api`` by its ``member``."""
    return upload_tiny_guest(api, member.headers)


@pytest.fixture(scope="module")
def api_process(settings: Settings, client: object) -> Iterator[ApiProcess]:
    """A ``minicloud-api`` process of the module's own that a test may kill and restart."""
    proc = ApiProcess(settings)
    proc.start()
    yield proc
    proc.stop()
