"""Migration primitives without a guest: path rewriting, incoming files, definitions moved
between two simulated hosts (libvirt's test driver). Live migration itself runs on real QEMU in
tests/e2e/test_live_migration.py."""

from __future__ import annotations

import dataclasses
import stat
import subprocess
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path

import pytest

from compute_agent.domain_xml import build_domain_xml, parse_metadata
from compute_agent.hypervisor import DomainRunning, Hypervisor, write_test_node_xml
from compute_agent.imagecache import backing_file, virtual_size
from compute_agent.migration import (
    MigrationEndpoint,
    MigrationError,
    export_definition,
    forget_definition,
    import_definition,
    local_endpoint,
    prepare_incoming,
    read_qemu_migration_ports,
    rewrite_paths,
    set_host_id,
    writable_disk_targets,
)
from compute_agent.seed import read_seed
from compute_agent.spec import InstancePaths
from tests.compute_agent.factories import make_spec

SRC = "/srv/hostA"
DST = "/data/hostB"


def domain_with_files(root: str = SRC) -> str:
    """A minicloud domain whose files all live under ``root`` (direct kernel boot), plus a
    backing store element like libvirt's migratable XML carries."""
    spec = make_spec(name="a <b> & 'c'", image_path=Path(f"{root}/images/base"),
                     kernel_path=Path(f"{root}/images/kernel"),
                     initrd_path=Path(f"{root}/images/initrd"), kernel_cmdline="console=ttyS0")
    xml = build_domain_xml(spec, InstancePaths(Path(f"{root}/instances"), spec.server_id))
    root_el = ET.fromstring(xml)
    disk = root_el.find("devices/disk")
    assert disk is not None
    backing = ET.SubElement(disk, "backingStore", type="file")
    ET.SubElement(backing, "format", type="qcow2")
    ET.SubElement(backing, "source", file=f"{root}/images/base")
    return ET.tostring(root_el, encoding="unicode")


def file_paths(xml: str) -> list[str]:
    """Every file path the domain names, in document order."""
    root = ET.fromstring(xml)
    paths = [el.get(attr, "") for el in root.iter() for attr in ("file", "path", "dir")
             if el.get(attr)]
    paths += [el.text or "" for tag in ("os/kernel", "os/initrd") for el in root.findall(tag)]
    return paths


def test_rewrite_paths_moves_every_file_to_the_destination_prefix() -> None:
    before = domain_with_files()
    after = rewrite_paths(before, {SRC: DST})
    old, new = file_paths(before), file_paths(after)
    # disk + backing store + seed + console log + kernel + initrd
    assert len(old) == len(new) == 6
    assert all(p.startswith(SRC + "/") for p in old)
    assert new == [DST + p[len(SRC):] for p in old]
    assert SRC not in after
    # Everything else is intact: the metadata (with its escaped name) reads back the same.
    assert parse_metadata(after) == parse_metadata(before)
    assert writable_disk_targets(after) == writable_disk_targets(before) == ["vda"]


def test_rewrite_paths_matches_whole_components_and_prefers_the_longest_prefix() -> None:
    xml = domain_with_files()
    # "/srv/host" is a string prefix of "/srv/hostA" but not a path prefix: nothing moves.
    assert file_paths(rewrite_paths(xml, {"/srv/host": DST})) == file_paths(xml)
    moved = file_paths(rewrite_paths(xml, {SRC: DST, f"{SRC}/images": "/cache"}))
    assert "/cache/base" in moved and "/cache/kernel" in moved
    assert any(p.startswith(f"{DST}/instances/") for p in moved)


def test_rewrite_paths_leaves_other_paths_and_refuses_bad_input() -> None:
    xml = domain_with_files()
    assert file_paths(rewrite_paths(xml, {"/elsewhere": DST})) == file_paths(xml)
    with pytest.raises(MigrationError):
        rewrite_paths(xml, {"relative/path": DST})
    with pytest.raises(MigrationError):
        rewrite_paths("<domain><name>x</name>", {SRC: DST})


def test_writable_disk_targets_skip_the_read_only_seed() -> None:
    assert writable_disk_targets(domain_with_files()) == ["vda"]


def test_prepare_incoming_makes_an_empty_overlay_of_the_exact_size_and_the_seed(
        tmp_path: Path) -> None:
    base = tmp_path / "images" / "base"
    base.parent.mkdir()
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(base), "64M"], check=True)
    spec = make_spec(image_path=base, image_format="raw", user_data="#cloud-config\n{}\n")
    paths = InstancePaths(tmp_path / "instances", spec.server_id)
    size = 1024**3 + 512 * 1024  # not whole GiB: the source disk's size is copied exactly

    prepare_incoming(spec, paths, virtual_size=size)
    assert virtual_size(paths.disk, "qcow2") == size
    assert backing_file(paths.disk) == (str(base), "raw")
    label, files = read_seed(paths.seed)
    assert label == "cidata"
    assert files["user-data"] == b"#cloud-config\n{}\n"
    assert paths.console_log.exists()
    modes = {p.name: stat.S_IMODE(p.stat().st_mode)
             for p in (paths.directory, paths.disk, paths.seed, paths.console_log)}
    assert modes == {paths.directory.name: 0o750, "disk.qcow2": 0o640, "seed.iso": 0o640,
                     "console.log": 0o640}

    # Given the source's seed bytes, the destination gets exactly those.
    prepare_incoming(spec, paths, virtual_size=size, seed_iso=b"source seed bytes")
    assert paths.seed.read_bytes() == b"source seed bytes"
    assert stat.S_IMODE(paths.seed.stat().st_mode) == 0o640
    with pytest.raises(MigrationError):
        prepare_incoming(spec, paths, virtual_size=0)


@pytest.fixture
def two_hosts(tmp_path: Path) -> Iterator[tuple[Hypervisor, Hypervisor]]:
    """Two simulated hosts (libvirt test driver), each with its own node file."""
    uri_a = write_test_node_xml(tmp_path / "a.xml", vcpus=4, memory_mb=8192, network=None)
    uri_b = write_test_node_xml(tmp_path / "b.xml", vcpus=4, memory_mb=8192, network=None)
    with Hypervisor(uri_a) as a, Hypervisor(uri_b) as b:
        yield a, b


@pytest.mark.libvirt
def test_a_shut_off_definition_moves_between_hosts_with_rewritten_paths(
        two_hosts: tuple[Hypervisor, Hypervisor], tmp_path: Path) -> None:
    a, b = two_hosts
    spec = make_spec()
    src_paths = InstancePaths(Path(SRC) / "instances", spec.server_id)
    a.define(spec, src_paths)

    definition = export_definition(a, spec.server_id, {SRC: DST})
    assert import_definition(b, definition) == spec.server_id
    assert import_definition(b, definition) == spec.server_id  # idempotent
    assert b.observed(spec.server_id) == "shutoff"
    moved = b.domain_xml(spec.server_id)
    assert f"{DST}/instances/{spec.server_id}/disk.qcow2" in moved
    assert SRC not in moved

    assert forget_definition(a, spec.server_id) is True
    assert a.observed(spec.server_id) == "absent"
    assert forget_definition(a, spec.server_id) is False


@pytest.mark.libvirt
def test_a_running_domain_is_never_forgotten_and_foreign_xml_is_refused(
        two_hosts: tuple[Hypervisor, Hypervisor]) -> None:
    a, b = two_hosts
    spec = make_spec()
    a.define(spec, InstancePaths(Path(SRC) / "instances", spec.server_id))
    a.start(spec.server_id)
    with pytest.raises(DomainRunning):
        forget_definition(a, spec.server_id)
    assert a.observed(spec.server_id) == "running"
    with pytest.raises(MigrationError):
        import_definition(b, "<domain type='test'><name>x</name></domain>")
    assert b.list_managed() == {}


def test_an_endpoint_names_the_libvirtd_listener_and_the_migration_stream() -> None:
    tls = MigrationEndpoint("10.0.0.7")
    assert (tls.libvirt_uri, tls.migrate_uri) == ("qemu+tls://10.0.0.7:16514/system",
                                                  "tcp://10.0.0.7")
    tcp = MigrationEndpoint("compute-2.example", transport="tcp", libvirt_port=16601)
    assert tcp.libvirt_uri == "qemu+tcp://compute-2.example:16601/system"
    v6 = MigrationEndpoint("fd00::7")
    assert (v6.libvirt_uri, v6.migrate_uri) == ("qemu+tls://[fd00::7]:16514/system",
                                                "tcp://[fd00::7]")
    assert (tls.port_min, tls.port_max) == (49152, 49215)  # libvirt's defaults


@pytest.mark.parametrize("kwargs", [
    {"address": "10.0.0.7/system?x"}, {"address": "a b"}, {"address": ""},
    {"address": "h", "transport": "ssh"}, {"address": "h", "libvirt_port": 0},
    {"address": "h", "port_min": 49300, "port_max": 49200}, {"address": "h", "port_max": 70000},
])
def test_a_bad_endpoint_is_refused(kwargs: dict[str, object]) -> None:
    with pytest.raises(MigrationError):
        MigrationEndpoint(**kwargs)  # type: ignore[arg-type]


def test_the_port_range_is_read_from_qemu_conf(tmp_path: Path) -> None:
    conf = tmp_path / "qemu.conf"
    assert read_qemu_migration_ports(conf) == (49152, 49215)  # no file: libvirt's defaults
    conf.write_text("# migration_port_min = 1\nmigration_port_min = 49200  # B\n"
                    'migration_port_max = "49215"\nvnc_listen = "0.0.0.0"\n')
    assert read_qemu_migration_ports(conf) == (49200, 49215)
    endpoint = local_endpoint("10.0.0.8", qemu_conf=conf)
    assert (endpoint.port_min, endpoint.port_max) == (49200, 49215)
    conf.write_text("migration_port_min = many\n")
    with pytest.raises(MigrationError):
        read_qemu_migration_ports(conf)
    conf.write_text("migration_port_min = 50000\nmigration_port_max = 49999\n")
    with pytest.raises(MigrationError):
        read_qemu_migration_ports(conf)


def test_set_host_id_makes_the_destination_host_the_owner() -> None:
    host_b = "8d3f2a10-4b5c-4d6e-9f70-8192a3b4c5d6"
    xml = domain_with_files()
    moved = set_host_id(xml, host_b)
    meta, before = parse_metadata(moved), parse_metadata(xml)
    assert meta is not None and before is not None
    assert meta.host_id == host_b
    assert meta == dataclasses.replace(before, host_id=host_b)
    assert parse_metadata(set_host_id(moved, before.server_id)) is not None  # replaced, not added
    assert set_host_id(moved, host_b).count("minicloud:host ") == 1
    with pytest.raises(MigrationError):
        set_host_id("<domain type='kvm'><name>x</name></domain>", host_b)
