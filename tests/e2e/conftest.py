"""Fixtures of the end-to-end tests: independent libvirt daemons acting as separate hosts."""

from __future__ import annotations

import os
import shutil
from collections.abc import Callable, Iterator

import pytest

from tests.e2e.libvirt_hosts import LibvirtHost, LibvirtHosts


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
