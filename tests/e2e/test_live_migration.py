"""Live migration of a real guest between two libvirt daemons with ``compute_agent.migration``.

Two independent libvirtd "hosts" (``two_libvirt_hosts``), each with its own agent data
directory. The tiny guest boots on host A from a domain built by ``compute_agent.domain_xml``;
its overlay carries a pattern written before boot (so a disk that was not copied cannot pass
the comparison). It prints a tick with its uptime every second. Waits are bounded only so a
broken migration fails instead of hanging; nothing asserts a duration.
"""

from __future__ import annotations

import dataclasses
import hashlib
import re
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from compute_agent.domain_xml import parse_metadata
from compute_agent.hypervisor import DomainNotFound, Hypervisor
from compute_agent.imagecache import ImageCache, prepare_instance_files
from compute_agent.migration import (
    MigrationFailed,
    MigrationProgress,
    abort_migration,
    active_migration,
    disk_virtual_size,
    live_migrate,
    migratable_xml,
    prepare_incoming,
    rewrite_paths,
    set_host_id,
)
from compute_agent.spec import InstancePaths, ServerSpec
from tests.e2e.libvirt_hosts import LibvirtHost, process_alive
from tests.e2e.test_qemu_boot import build_guest_image, wait_for

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

TICK = re.compile(r"^minicloud-guest: tick (\d+) uptime=([0-9.]+)\r?$", re.MULTILINE)
IMAGE_ID, KERNEL_ID, INITRD_ID = (f"5e1f2b6c-0000-4000-8000-00000000000{i}" for i in (1, 2, 3))
# Bytes written into A's overlay before boot at 1 MiB: only a copied disk has them.
PATTERN_CMD = "write -P 0xa5 1M 64k"
MIGRATION_TIMEOUT_S = 120.0
HOST_A, HOST_B = "a0000000-0000-4000-8000-00000000000a", "b0000000-0000-4000-8000-00000000000b"


@dataclasses.dataclass
class Guest:
    spec: ServerSpec
    paths: InstancePaths


def cache_guest_files(host: LibvirtHost) -> dict[str, Path]:
    """Put the tiny guest's disk, kernel and initrd in ``host``'s image cache (same ids on
    every host, as the API's image ids are)."""
    image = build_guest_image()
    cache = ImageCache(host.images_dir)
    stored = {}
    for image_id, name in ((IMAGE_ID, "disk.qcow2"), (KERNEL_ID, "vmlinuz"),
                           (INITRD_ID, "initrd.img")):
        data = (image / name).read_bytes()
        stored[name] = cache.store(image_id, iter([data]), hashlib.sha256(data).hexdigest())
    return stored


def spec_on(host: LibvirtHost, server_id: str) -> ServerSpec:
    image = build_guest_image()
    files = cache_guest_files(host)
    return ServerSpec(
        server_id=server_id, project_id="0e4bc6c5-6c2b-4c4f-9d44-3f1d6e2a5a10",
        name="migrant", vcpus=1, ram_mb=256, disk_gb=1, image_path=files["disk.qcow2"],
        image_format="qcow2", image_id=IMAGE_ID, flavor_name="tiny",
        kernel_path=files["vmlinuz"], initrd_path=files["initrd.img"],
        kernel_cmdline=(image / "cmdline").read_text().strip(), network=None, virt_type="qemu",
        host_id=HOST_A if host.name == "hostA" else HOST_B)


def ticks(log: str) -> list[tuple[int, float]]:
    return [(int(n), float(up)) for n, up in TICK.findall(log)]


@pytest.fixture
def hosts(two_libvirt_hosts: list[LibvirtHost]) -> Iterator[tuple[LibvirtHost, LibvirtHost]]:
    a, b = two_libvirt_hosts
    yield a, b


@pytest.fixture
def guest_on_a(hosts: tuple[LibvirtHost, LibvirtHost]) -> Iterator[Guest]:
    """The tiny guest booted on host A (its console has shown three ticks)."""
    a, _ = hosts
    spec = spec_on(a, "3a1f0c2e-8d4b-4e8f-9a6b-1c2d3e4f5a60")
    paths = InstancePaths(a.instances_dir, spec.server_id)
    prepare_instance_files(spec, paths)
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", PATTERN_CMD, str(paths.disk)], check=True,
                   stdout=subprocess.DEVNULL)
    with Hypervisor(a.uri) as hv:
        hv.define(spec, paths)
        hv.start(spec.server_id)
    wait_for(paths, "minicloud-guest: tick 3 ", 1)
    yield Guest(spec, paths)


def incoming(guest: Guest, a: LibvirtHost, b: LibvirtHost,
             hv_a: Hypervisor) -> tuple[Guest, str, str]:
    """Prepare B's files for ``guest`` and return (B's guest, dest XML, persistent XML)."""
    spec_b = spec_on(b, guest.spec.server_id)
    paths_b = InstancePaths(b.instances_dir, guest.spec.server_id)
    prepare_incoming(spec_b, paths_b, virtual_size=disk_virtual_size(hv_a, guest.spec.server_id),
                     seed_iso=guest.paths.seed.read_bytes())
    live, persistent = migratable_xml(hv_a, guest.spec.server_id)
    path_map = {str(a.data_dir): str(b.data_dir)}
    return (Guest(spec_b, paths_b), set_host_id(rewrite_paths(live, path_map), HOST_B),
            set_host_id(rewrite_paths(persistent, path_map), HOST_B))


def domain_names(host: LibvirtHost) -> list[str]:
    conn = libvirt.open(host.uri)
    try:
        return sorted(d.name() for d in conn.listAllDomains(0))
    finally:
        conn.close()


def test_live_migration_moves_the_running_guest_and_its_disk(
        hosts: tuple[LibvirtHost, LibvirtHost], guest_on_a: Guest) -> None:
    a, b = hosts
    sid = guest_on_a.spec.server_id
    progress: list[MigrationProgress] = []
    with Hypervisor(a.uri) as hv_a, Hypervisor(b.uri) as hv_b:
        guest_b, dest_xml, persist_xml = incoming(guest_on_a, a, b, hv_a)
        assert str(a.data_dir) not in dest_xml + persist_xml

        # B's endpoint as its agent would register it names B's listener and QEMU ports.
        endpoint = b.endpoint
        assert (endpoint.libvirt_uri, endpoint.migrate_uri) == (b.tcp_uri, b.migrate_uri)
        assert (endpoint.port_min, endpoint.port_max) == b.migration_ports
        seen_by_others: list[bool] = []
        assert active_migration(hv_a, sid) is None

        def on_progress(reading: MigrationProgress) -> None:
            progress.append(reading)
            # Another connection (an agent started again) sees the job libvirt runs.
            with Hypervisor(a.uri) as other:
                try:
                    seen_by_others.append(active_migration(other, sid) is not None)
                except DomainNotFound:
                    seen_by_others.append(False)  # it has just left A

        stats = live_migrate(hv_a, sid, dest_libvirt_uri=endpoint.libvirt_uri,
                             migrate_uri=endpoint.migrate_uri,
                             dest_xml=dest_xml, persist_xml=persist_xml, max_downtime_ms=300,
                             timeout_s=MIGRATION_TIMEOUT_S, on_progress=on_progress)

        # The source domain is gone (undefined too); B runs it and keeps it defined with B's
        # paths.
        assert hv_a.observed(sid) == "absent"
        assert domain_names(a) == []
        assert hv_b.observed(sid) == "running"
        persistent_b = hv_b.domain(sid).XMLDesc(libvirt.VIR_DOMAIN_XML_INACTIVE)
        assert str(a.data_dir) not in persistent_b
        assert str(guest_b.paths.disk) in persistent_b
        assert hv_b.domain(sid).isPersistent() == 1
        # B's agent owns it: the metadata names host B, live and persistent.
        for xml in (hv_b.domain_xml(sid), persistent_b):
            meta = parse_metadata(xml)
            assert meta is not None and meta.host_id == HOST_B

        # The job reported progress and its stats.
        assert progress and all(p.data_total >= p.data_processed for p in progress)
        assert True in seen_by_others
        assert stats.elapsed_ms > 0
        assert stats.downtime_ms is not None and stats.downtime_ms >= 0

        # Same boot: B's console goes on ticking from where A's stopped, without a new start.
        a_ticks = ticks(guest_on_a.paths.console_log.read_text(errors="replace"))
        last_a = a_ticks[-1]
        log_b = wait_for(guest_b.paths, f"minicloud-guest: tick {last_a[0] + 3} ", 1)
        b_ticks = ticks(log_b)
        assert "userspace started" not in log_b
        assert "hostname=" not in log_b
        # A line cut in two by the switch-over may be lost, never repeated from 1.
        assert b_ticks[0][0] in (last_a[0] + 1, last_a[0] + 2)
        assert b_ticks[0][1] > last_a[1]
        assert [n for n, _ in b_ticks] == list(range(b_ticks[0][0], b_ticks[-1][0] + 1))

        # The disk was copied: guest-visible content equal, the pattern included.
        dom_b = hv_b.domain(sid)
        dom_b.suspend()
        try:
            compared = subprocess.run(
                ["qemu-img", "compare", "-U", "-f", "qcow2", "-F", "qcow2",
                 str(guest_on_a.paths.disk), str(guest_b.paths.disk)],
                capture_output=True, text=True, check=False)
            pattern = subprocess.run(
                ["qemu-io", "-U", "-r", "-f", "qcow2", "-c", "read -P 0xa5 1M 64k",
                 str(guest_b.paths.disk)], capture_output=True, text=True, check=False)
        finally:
            dom_b.resume()
        assert compared.returncode == 0, compared.stdout + compared.stderr
        assert "Pattern verification failed" not in pattern.stdout + pattern.stderr
        assert pattern.returncode == 0, pattern.stdout + pattern.stderr


def test_a_failed_or_aborted_migration_leaves_the_guest_running_on_the_source(
        hosts: tuple[LibvirtHost, LibvirtHost], guest_on_a: Guest) -> None:
    a, b = hosts
    sid = guest_on_a.spec.server_id
    with Hypervisor(a.uri) as hv_a, Hypervisor(b.uri) as hv_b:
        # 1. A migration address where nothing listens.
        _, dest_xml, persist_xml = incoming(guest_on_a, a, b, hv_a)
        with pytest.raises(MigrationFailed) as failed:
            live_migrate(hv_a, sid, dest_libvirt_uri=b.tcp_uri, migrate_uri="tcp://127.0.0.1:9",
                         dest_xml=dest_xml, persist_xml=persist_xml, max_downtime_ms=300,
                         timeout_s=MIGRATION_TIMEOUT_S)
        assert failed.value.source_state == "running"
        assert not failed.value.aborted and not failed.value.timed_out
        assert hv_a.observed(sid) == "running"
        assert hv_b.observed(sid) == "absent"
        assert domain_names(b) == []

        # The tiny guest migrates in well under a second, quicker than the first progress
        # report: from here on every migration is slowed to 1 MiB/s (a setting of the
        # domain), so each abort below lands while the copy runs, not after it completed.
        hv_a.domain(sid).migrateSetMaxSpeed(1, 0)

        # 2. Aborted by the caller as soon as the job reports progress.
        _, dest_xml, persist_xml = incoming(guest_on_a, a, b, hv_a)
        abort = threading.Event()
        with pytest.raises(MigrationFailed) as aborted:
            live_migrate(hv_a, sid, dest_libvirt_uri=b.tcp_uri, migrate_uri=b.migrate_uri,
                         dest_xml=dest_xml, persist_xml=persist_xml, max_downtime_ms=300,
                         timeout_s=MIGRATION_TIMEOUT_S, on_progress=lambda _p: abort.set(),
                         abort=abort)
        assert aborted.value.aborted and aborted.value.settled
        assert aborted.value.source_state == "running"
        assert hv_a.observed(sid) == "running"
        assert hv_a.domain(sid).isPersistent() == 1
        assert domain_names(b) == []

        # 3. Over its time limit (the first check comes after one poll interval, long before
        # the destination's QEMU is even up).
        _, dest_xml, persist_xml = incoming(guest_on_a, a, b, hv_a)
        with pytest.raises(MigrationFailed) as timed_out:
            live_migrate(hv_a, sid, dest_libvirt_uri=b.tcp_uri, migrate_uri=b.migrate_uri,
                         dest_xml=dest_xml, persist_xml=persist_xml, max_downtime_ms=300,
                         timeout_s=0.001)
        assert timed_out.value.timed_out and timed_out.value.settled
        assert timed_out.value.source_state == "running"
        assert hv_a.observed(sid) == "running"
        assert domain_names(b) == []

        # 4. Aborted from another connection, as an agent started again would abort the job
        # its previous process left running.
        _, dest_xml, persist_xml = incoming(guest_on_a, a, b, hv_a)
        aborted_by_other: list[bool] = []

        def abort_from_elsewhere(_reading: MigrationProgress) -> None:
            if not aborted_by_other:
                with Hypervisor(a.uri) as other:
                    aborted_by_other.append(abort_migration(other, sid))

        with pytest.raises(MigrationFailed) as foreign_abort:
            live_migrate(hv_a, sid, dest_libvirt_uri=b.tcp_uri, migrate_uri=b.migrate_uri,
                         dest_xml=dest_xml, persist_xml=persist_xml, max_downtime_ms=300,
                         timeout_s=MIGRATION_TIMEOUT_S, on_progress=abort_from_elsewhere)
        assert aborted_by_other == [True]
        assert foreign_abort.value.source_state == "running"
        assert hv_a.observed(sid) == "running"
        assert active_migration(hv_a, sid) is None
        assert abort_migration(hv_a, sid) is False
        assert domain_names(b) == []

        # The guest on A never stopped: its ticks go on in the same boot.
        last = ticks(guest_on_a.paths.console_log.read_text(errors="replace"))[-1][0]
        log = wait_for(guest_on_a.paths, f"minicloud-guest: tick {last + 2} ", 1)
        assert log.count("userspace started") == 1


def test_a_killed_host_comes_back_with_its_domain_defined_and_shut_off(
        hosts: tuple[LibvirtHost, LibvirtHost]) -> None:
    """The fixture's dead-host simulation, which evacuation tests rely on."""
    a, _ = hosts
    # The daemon's bind mounts exist only in its own namespace, never in ours.
    assert str(a.root) not in Path("/proc/self/mountinfo").read_text()
    spec = spec_on(a, "7c0d5e1a-2b3c-4d5e-8f60-718293a4b5c6")
    paths = InstancePaths(a.instances_dir, spec.server_id)
    prepare_instance_files(spec, paths)
    with Hypervisor(a.uri) as hv:
        hv.define(spec, paths)
        hv.start(spec.server_id)
    qemu = a.qemu_pids()
    assert len(qemu) == 1

    a.kill()
    assert a.pid is None
    assert not process_alive(qemu[0])
    with pytest.raises(libvirt.libvirtError):
        libvirt.open(a.uri)

    a.restart()
    with Hypervisor(a.uri) as hv:
        assert hv.observed(spec.server_id) == "shutoff"
    assert a.qemu_pids() == []
