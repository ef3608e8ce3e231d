"""The libvirt adapter on libvirt's own test driver (a private host per test from a node file)."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from compute_agent.domain_xml import xml_text
from compute_agent.hypervisor import (
    DomainNotFound,
    DomainRunning,
    Hypervisor,
    HypervisorError,
    PowerState,
    write_test_node_xml,
)
from compute_agent.spec import InstancePaths, ServerSpec, SpecError, instance_ids_on_disk
from tests.compute_agent.factories import make_spec

pytestmark = pytest.mark.libvirt

FOREIGN_UUID = "0f0f0f0f-1111-4222-8333-444455556666"


def add_foreign_domain(node_file: Path) -> None:
    """Put a domain minicloud did not create (no metadata) on the simulated host."""
    tree = ET.parse(node_file)
    dom = ET.SubElement(tree.getroot(), "domain", type="test")
    ET.SubElement(dom, "name").text = "someone-elses-vm"
    ET.SubElement(dom, "uuid").text = FOREIGN_UUID
    ET.SubElement(dom, "memory").text = "65536"
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type").text = "hvm"
    tree.write(node_file)


@pytest.fixture
def node_file(tmp_path: Path) -> Path:
    return tmp_path / "node.xml"


@pytest.fixture
def hv(node_file: Path) -> Iterator[Hypervisor]:
    """A simulated host with 8 CPUs, 16 GiB, the NAT network `default` and a foreign domain."""
    uri = write_test_node_xml(node_file, vcpus=8, memory_mb=16384)
    add_foreign_domain(node_file)
    with Hypervisor(uri) as h:
        yield h


def define(hv: Hypervisor, tmp_path: Path, **overrides: object) -> tuple[ServerSpec,
                                                                         InstancePaths]:
    spec = make_spec(**overrides)
    paths = InstancePaths(tmp_path / "instances", spec.server_id)
    hv.define(spec, paths)
    return spec, paths


def test_node_info_reports_the_simulated_host_size(tmp_path: Path) -> None:
    uri = write_test_node_xml(tmp_path / "big.xml", vcpus=64, memory_mb=262144)
    with Hypervisor(uri) as h:
        info = h.node_info()
    assert (info.vcpus, info.memory_mb, info.arch) == (64, 262144, "x86_64")


def test_virt_types_and_reconnect(hv: Hypervisor) -> None:
    assert hv.virt_types("i686") == ["test"]  # the test driver offers only its own type
    assert hv.virt_types("aarch64") == []
    hv.ensure_connected()  # alive: keeps the connection (and the simulated host's state)
    assert hv.node_info().vcpus == 8


def test_disk_gb_is_the_filesystem_size(tmp_path: Path) -> None:
    assert Hypervisor.disk_gb(tmp_path) > 0


def test_unreachable_uri_raises() -> None:
    with pytest.raises(HypervisorError):
        Hypervisor("test:///nonexistent/dir/node.xml")


def test_define_start_stop_reboot_and_destroy(hv: Hypervisor, tmp_path: Path) -> None:
    spec, _ = define(hv, tmp_path)
    assert hv.list_managed() == {spec.server_id: PowerState.SHUTOFF}
    assert hv.observed(spec.server_id) == "shutoff"

    assert hv.start(spec.server_id) is True
    assert hv.start(spec.server_id) is False  # already running: no-op
    assert hv.observed(spec.server_id) == "running"

    assert hv.shutdown(spec.server_id, timeout=5) is True
    assert hv.state(spec.server_id) is PowerState.SHUTOFF
    assert hv.shutdown(spec.server_id, timeout=5) is True  # already off: no-op

    hv.reboot(spec.server_id, hard=False)  # a shut-off server reboots into running
    assert hv.observed(spec.server_id) == "running"
    hv.reboot(spec.server_id, hard=True)
    assert hv.observed(spec.server_id) == "running"
    hv.reboot(spec.server_id, hard=False)
    assert hv.observed(spec.server_id) == "running"

    assert hv.destroy_and_undefine(spec.server_id) is True
    assert hv.observed(spec.server_id) == "absent"
    assert hv.list_managed() == {}
    assert hv.destroy_and_undefine(spec.server_id) is False  # idempotent


def test_forced_stop_when_timeout_is_zero(hv: Hypervisor, tmp_path: Path) -> None:
    spec, _ = define(hv, tmp_path)
    hv.start(spec.server_id)
    assert hv.shutdown(spec.server_id, timeout=0) is False
    assert hv.observed(spec.server_id) == "shutoff"


def test_stop_reason_says_why_a_domain_is_off(hv: Hypervisor, tmp_path: Path) -> None:
    spec, _ = define(hv, tmp_path)
    sid = spec.server_id
    hv.start(sid)
    assert hv.stop_reason(sid) is None  # running
    hv.domain(sid).destroy()  # killed behind the agent's back
    assert hv.stop_reason(sid) == "destroyed"
    hv.start(sid)
    assert hv.shutdown(sid, timeout=5) is True  # the guest powered off (ACPI)
    assert hv.stop_reason(sid) == "shutdown"
    hv.destroy_and_undefine(sid)
    assert hv.stop_reason(sid) is None  # no domain


def test_define_is_idempotent_and_keeps_one_domain(hv: Hypervisor, tmp_path: Path) -> None:
    spec, paths = define(hv, tmp_path)
    hv.define(spec, paths)
    hv.define(spec, paths)
    assert list(hv.list_managed()) == [spec.server_id]


def test_list_managed_domains_carries_metadata(hv: Hypervisor, tmp_path: Path) -> None:
    spec, _ = define(hv, tmp_path, name="<db> & 'x'", flavor_name="small", vcpus=2)
    [found] = hv.list_managed_domains()
    assert found.server_id == spec.server_id
    assert (found.metadata.project_id, found.metadata.name, found.metadata.flavor_name,
            found.metadata.vcpus) == (spec.project_id, "<db> & 'x'", "small", 2)


def test_foreign_domains_are_never_listed_nor_touched(hv: Hypervisor, tmp_path: Path) -> None:
    define(hv, tmp_path)
    assert FOREIGN_UUID not in hv.list_managed()
    assert hv.state(FOREIGN_UUID) is None
    with pytest.raises(DomainNotFound):
        hv.start(FOREIGN_UUID)
    with pytest.raises(DomainNotFound):
        hv.shutdown(FOREIGN_UUID, timeout=0)
    assert hv.destroy_and_undefine(FOREIGN_UUID) is False
    # Defining a server that would take over the foreign domain's UUID is refused.
    with pytest.raises(HypervisorError):
        hv.define(make_spec(server_id=FOREIGN_UUID),
                  InstancePaths(tmp_path, FOREIGN_UUID))
    assert "someone-elses-vm" in hv.all_domain_names()


def test_redefine_for_resize_needs_the_domain_shut_off(hv: Hypervisor, tmp_path: Path) -> None:
    spec, paths = define(hv, tmp_path, vcpus=1, ram_mb=512)
    bigger = make_spec(server_id=spec.server_id, project_id=spec.project_id, vcpus=4,
                       ram_mb=4096, disk_gb=40, flavor_name="medium")
    hv.start(spec.server_id)
    with pytest.raises(DomainRunning):
        hv.redefine(bigger, paths)

    hv.shutdown(spec.server_id, timeout=5)
    hv.redefine(bigger, paths)

    [found] = hv.list_managed_domains()
    assert (found.metadata.vcpus, found.metadata.ram_mb, found.metadata.flavor_name) == (
        4, 4096, "medium")
    root = ET.fromstring(hv.domain_xml(spec.server_id))
    assert root.findtext("vcpu") == "4"


def test_redefine_of_an_unknown_server_raises(hv: Hypervisor, tmp_path: Path) -> None:
    spec = make_spec()
    with pytest.raises(DomainNotFound):
        hv.redefine(spec, InstancePaths(tmp_path, spec.server_id))


def test_addresses_come_from_dhcp_leases(hv: Hypervisor, tmp_path: Path) -> None:
    wired, _ = define(hv, tmp_path, network="default")
    bare, _ = define(hv, tmp_path, network=None)
    assert hv.addresses(wired.server_id) == []  # not running yet
    hv.start(wired.server_id)
    hv.start(bare.server_id)

    [addr] = hv.addresses(wired.server_id)
    assert (addr.network, addr.version, addr.prefix) == ("default", 4, 24)
    assert addr.address.startswith("192.168.122.")
    assert hv.addresses(bare.server_id) == []
    assert hv.all_addresses() == {wired.server_id: [addr]}


def test_ensure_network_defines_and_starts_default(tmp_path: Path) -> None:
    uri = write_test_node_xml(tmp_path / "node.xml", vcpus=2, memory_mb=2048, network=None)
    with Hypervisor(uri) as h:
        h.ensure_network("default")
        h.ensure_network("default")  # idempotent
        spec, _ = define(h, tmp_path, network="default")
        h.start(spec.server_id)
        assert len(h.addresses(spec.server_id)) == 1


def test_console_tail_reads_the_end_of_the_log(hv: Hypervisor, tmp_path: Path) -> None:
    spec, paths = define(hv, tmp_path)
    assert hv.console_tail(spec.server_id) == ""  # never booted: no log yet
    paths.create()
    paths.console_log.write_bytes(b"boot\n" * 100 + b"minicloud-guest: hostname=web-1\n")

    assert hv.console_log_file(spec.server_id) == paths.console_log
    assert hv.console_tail(spec.server_id, max_bytes=32) == "minicloud-guest: hostname=web-1\n"
    assert hv.console_tail(spec.server_id).startswith("boot\n")


def test_unknown_and_invalid_ids(hv: Hypervisor) -> None:
    unknown = str(uuid.uuid4())
    assert hv.observed(unknown) == "absent"
    with pytest.raises(DomainNotFound):
        hv.start(unknown)
    with pytest.raises(DomainNotFound):
        hv.console_tail(unknown)
    with pytest.raises(SpecError):
        hv.state("../../etc")


def test_instance_paths_create_and_remove(tmp_path: Path) -> None:
    paths = InstancePaths(tmp_path / "instances", str(uuid.uuid4()))
    paths.create()
    paths.disk.write_bytes(b"x")
    assert paths.directory.stat().st_mode & 0o777 == 0o750  # QEMU reads it through its group
    (tmp_path / "instances" / "not-a-server").mkdir()
    (tmp_path / "instances" / str(uuid.uuid4())).write_text("a file, not a directory")
    assert instance_ids_on_disk(tmp_path / "instances") == [paths.server_id]
    paths.remove()
    assert not paths.exists()
    paths.remove()  # idempotent
    assert instance_ids_on_disk(tmp_path / "instances") == []
    assert instance_ids_on_disk(tmp_path / "missing") == []


@settings(max_examples=60, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(name=st.text(min_size=1, max_size=255) | st.sampled_from(["a\rb", "a\r\nb", " x "]))
def test_libvirt_accepts_any_server_name_and_keeps_it_exactly(hv: Hypervisor, tmp_path: Path,
                                                               name: str) -> None:
    spec, _ = define(hv, tmp_path, name=name)
    try:
        [found] = [d for d in hv.list_managed_domains() if d.server_id == spec.server_id]
        # Characters XML cannot carry at all are dropped; everything else survives verbatim.
        assert found.metadata.name == xml_text(name)
    finally:
        hv.destroy_and_undefine(spec.server_id)
