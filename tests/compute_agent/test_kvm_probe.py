"""virt type auto picks a type under which a tiny guest really prints (real QEMU via libvirtd).

The probe guest is a hand-assembled boot sector writing a marker to its serial port. Whether
KVM works differs between machines (nested KVM is often offered and broken), so these tests
never assert which type wins, only that the probe can succeed (TCG prints), that a guest which
starts but stays silent counts as failed, and that the type ``auto`` chooses runs guests.
Deadlines are generous bounds so a broken boot fails instead of hanging, not timing checks.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

import libvirt
import pytest

from compute_agent.config import resolve_virt_type
from compute_agent.hypervisor import PROBE_MARKER, Hypervisor, probe_boot_sector

pytestmark = [pytest.mark.qemu, pytest.mark.slow]

# QEMU runs as libvirt-qemu: its files must sit under directories it may traverse, which
# pytest's tmp_path (under a 0700 directory) is not.
WORKDIR = Path("/var/lib/minicloud-test/probe")
BOUND = 60.0


@pytest.fixture
def hv() -> Iterator[Hypervisor]:
    with Hypervisor("qemu:///system") as h:
        yield h


def test_boot_sector_is_one_bootable_sector() -> None:
    sector = probe_boot_sector()
    assert len(sector) == 512
    assert sector[510:] == b"\x55\xaa"
    assert PROBE_MARKER + b"\r\n\0" in sector


def test_tcg_guest_prints_the_marker(hv: Hypervisor) -> None:
    probe = hv.guest_prints("qemu", WORKDIR, BOUND)
    assert probe.printed, probe.reason
    assert list(WORKDIR.iterdir()) == []  # the scratch files are gone


def test_a_guest_that_starts_but_stays_silent_fails_the_probe(hv: Hypervisor) -> None:
    # jmp $ : the vCPU spins forever, as a broken nested KVM guest does, and prints nothing.
    silent = b"\xeb\xfe".ljust(510, b"\0") + b"\x55\xaa"
    probe = hv.guest_prints("qemu", WORKDIR, 2.0, sector=silent)
    assert not probe.printed
    assert "printed nothing within 2 s" in probe.reason
    conn = libvirt.open("qemu:///system")
    try:
        assert not [d for d in conn.listAllDomains(0) if d.name().startswith("minicloud-probe")]
    finally:
        conn.close()


def test_auto_chooses_a_type_whose_guests_print(hv: Hypervisor) -> None:
    chosen = resolve_virt_type("auto", lambda: hv.kvm_probe(WORKDIR, 5.0))
    probe = hv.guest_prints(chosen, WORKDIR, BOUND)
    assert probe.printed, f"auto chose {chosen}: {probe.reason}"


def test_probe_files_that_cannot_be_written_fail_the_probe_without_raising(
    hv: Hypervisor, tmp_path: Path
) -> None:
    blocker = tmp_path / "a-file"
    blocker.write_text("not a directory")
    probe = hv.guest_prints("qemu", blocker / "work", BOUND)
    assert not probe.printed
    assert "cannot write the probe's files" in probe.reason
