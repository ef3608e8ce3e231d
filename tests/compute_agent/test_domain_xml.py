"""Domain XML: structure, metadata round trip, and hostile input that must not change either."""

from __future__ import annotations

import uuid
import xml.etree.ElementTree as ET
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from compute_agent.domain_xml import (
    METADATA_NS,
    build_domain_xml,
    console_log_path,
    parse_metadata,
)
from compute_agent.spec import InstancePaths, SpecError, domain_name, hostname_from_name
from tests.compute_agent.factories import make_spec

ROOT = Path("/var/lib/minicloud/instances")
HOSTILE = [
    "</name><devices><disk/></devices><name>",
    "a\"b'c<d>e&f",
    "../../../etc/passwd",
    "]]><!-- --><![CDATA[x]]>",
    "<!DOCTYPE x [<!ENTITY e SYSTEM 'file:///etc/passwd'>]>&e;",
    "web\x00\x1b[31m\ud800",
]


def shape(xml: str) -> list[tuple[str, tuple[str, ...]]]:
    """The element tree's structure: every element path with its attribute names, in order."""
    out: list[tuple[str, tuple[str, ...]]] = []

    def walk(el: ET.Element, prefix: str) -> None:
        path = f"{prefix}/{el.tag}"
        out.append((path, tuple(sorted(el.attrib))))
        for child in el:
            walk(child, path)

    walk(ET.fromstring(xml), "")
    return out


def file_paths(xml: str) -> list[str]:
    root = ET.fromstring(xml)
    paths = [s.get("file", "") for s in root.iter("source") if s.get("file")]
    paths += [s.get("file", "") for s in root.iter("log")]
    return paths


def test_domain_has_name_uuid_resources_and_type_from_spec() -> None:
    spec = make_spec(vcpus=2, ram_mb=1024, virt_type="kvm")
    root = ET.fromstring(build_domain_xml(spec, InstancePaths(ROOT, spec.server_id)))

    assert root.get("type") == "kvm"
    assert root.findtext("name") == f"minicloud-{spec.server_id}"
    assert root.findtext("uuid") == spec.server_id
    assert root.findtext("vcpu") == "2"
    mem = root.find("memory")
    assert mem is not None and (mem.text, mem.get("unit")) == ("1024", "MiB")


def test_root_disk_is_the_overlay_and_seed_is_a_readonly_virtio_disk() -> None:
    spec = make_spec()
    paths = InstancePaths(ROOT, spec.server_id)
    root = ET.fromstring(build_domain_xml(spec, paths))

    disks = root.findall("devices/disk")
    assert [d.find("target").get("dev") for d in disks] == ["vda", "vdb"]  # type: ignore[union-attr]
    assert all(d.find("target").get("bus") == "virtio" for d in disks)  # type: ignore[union-attr]
    vda, vdb = disks
    assert vda.find("source").get("file") == str(paths.disk)  # type: ignore[union-attr]
    assert vda.find("driver").get("type") == "qcow2"  # type: ignore[union-attr]
    assert vda.find("readonly") is None
    assert vdb.find("source").get("file") == str(paths.seed)  # type: ignore[union-attr]
    assert vdb.find("readonly") is not None


def test_serial_console_is_logged_to_the_instance_directory() -> None:
    spec = make_spec()
    paths = InstancePaths(ROOT, spec.server_id)
    xml = build_domain_xml(spec, paths)
    root = ET.fromstring(xml)

    assert console_log_path(xml) == str(paths.console_log)
    assert root.find("devices/console/target").get("type") == "serial"  # type: ignore[union-attr]


def test_no_network_means_no_nic_and_a_network_gives_one_virtio_nic() -> None:
    bare = make_spec(network=None)
    wired = make_spec(network="default")

    assert ET.fromstring(build_domain_xml(bare, InstancePaths(ROOT, bare.server_id))).find(
        "devices/interface") is None
    nics = ET.fromstring(build_domain_xml(wired, InstancePaths(ROOT, wired.server_id))).findall(
        "devices/interface")
    assert len(nics) == 1
    assert nics[0].get("type") == "network"
    assert nics[0].find("source").get("network") == "default"  # type: ignore[union-attr]
    assert nics[0].find("model").get("type") == "virtio"  # type: ignore[union-attr]


def test_direct_kernel_boot_adds_kernel_initrd_and_cmdline() -> None:
    spec = make_spec(kernel_path=Path("/cache/k"), initrd_path=Path("/cache/i"),
                     kernel_cmdline="console=ttyS0")
    os_el = ET.fromstring(build_domain_xml(spec, InstancePaths(ROOT, spec.server_id))).find("os")
    assert os_el is not None
    assert (os_el.findtext("kernel"), os_el.findtext("initrd"), os_el.findtext("cmdline")) == (
        "/cache/k", "/cache/i", "console=ttyS0")
    assert os_el.find("boot") is None


def test_disk_boot_without_kernel() -> None:
    spec = make_spec()
    os_el = ET.fromstring(build_domain_xml(spec, InstancePaths(ROOT, spec.server_id))).find("os")
    assert os_el is not None and os_el.find("kernel") is None
    assert os_el.find("boot").get("dev") == "hd"  # type: ignore[union-attr]


def test_metadata_round_trips() -> None:
    spec = make_spec(name="db <primary>", flavor_name="small", vcpus=1, ram_mb=2048, disk_gb=20)
    xml = build_domain_xml(spec, InstancePaths(ROOT, spec.server_id))

    meta = parse_metadata(xml)
    assert meta is not None
    assert (meta.server_id, meta.project_id, meta.name) == (spec.server_id, spec.project_id,
                                                            "db <primary>")
    assert (meta.flavor_id, meta.flavor_name, meta.vcpus, meta.ram_mb, meta.disk_gb) == (
        spec.flavor_id, "small", 1, 2048, 20)
    assert ET.fromstring(xml).find(f"metadata/{{{METADATA_NS}}}instance") is not None


def test_domains_without_our_metadata_are_not_ours() -> None:
    sid = str(uuid.uuid4())
    assert parse_metadata(f"<domain><name>x</name><uuid>{sid}</uuid></domain>") is None
    assert parse_metadata("not xml") is None
    spec = make_spec()
    xml = build_domain_xml(spec, InstancePaths(ROOT, spec.server_id))
    # Metadata claiming another server than the domain's own UUID is not trusted.
    forged = xml.replace(f"<uuid>{spec.server_id}</uuid>", f"<uuid>{sid}</uuid>")
    assert parse_metadata(forged) is None


@pytest.mark.parametrize("name", HOSTILE)
def test_hostile_name_changes_neither_structure_nor_paths(name: str) -> None:
    benign = make_spec(name="web-1")
    hostile = make_spec(name=name, flavor_name=name)
    benign_xml = build_domain_xml(benign, InstancePaths(ROOT, benign.server_id))
    hostile_xml = build_domain_xml(hostile, InstancePaths(ROOT, hostile.server_id))

    assert shape(hostile_xml) == shape(benign_xml)
    root = ET.fromstring(hostile_xml)
    assert root.findtext("name") == f"minicloud-{hostile.server_id}"
    for path in file_paths(hostile_xml):
        assert path.startswith(f"{ROOT}/{hostile.server_id}/")
        assert ".." not in Path(path).parts
    meta = parse_metadata(hostile_xml)
    assert meta is not None and meta.server_id == hostile.server_id


@settings(max_examples=200, deadline=None)
@given(name=st.text(min_size=1, max_size=300))
def test_any_name_keeps_the_structure(name: str) -> None:
    spec = make_spec(name=name)
    benign = make_spec(server_id=spec.server_id)
    paths = InstancePaths(ROOT, spec.server_id)
    xml = build_domain_xml(spec, paths)
    assert shape(xml) == shape(build_domain_xml(benign, paths))
    meta = parse_metadata(xml)
    assert meta is not None and meta.server_id == spec.server_id


def test_hostname_derived_from_a_hostile_name_is_a_plain_label() -> None:
    assert make_spec(name="../../Etc/Passwd <x>").hostname == "etc-passwd-x"
    assert hostname_from_name("<>&") == "server"
    assert len(hostname_from_name("a" * 300)) == 63


@pytest.mark.parametrize("bad", ["../x", "", "not-a-uuid", "12345678123456781234567812345678",
                                 "{12345678-1234-5678-1234-567812345678}"])
def test_paths_and_names_only_from_canonical_uuids(bad: str) -> None:
    with pytest.raises(SpecError):
        InstancePaths(ROOT, bad)
    with pytest.raises(SpecError):
        domain_name(bad)
    with pytest.raises(SpecError):
        make_spec(server_id=bad)


@pytest.mark.parametrize("field,value", [
    ("network", "default' type='bridge"), ("hostname", "a.b"), ("vcpus", 0), ("ram_mb", -1),
    ("virt_type", "xen"), ("image_format", "vmdk"), ("image_path", Path("relative.qcow2")),
    ("ssh_keys", ("ssh-ed25519 AAA\nssh-rsa BBB",)), ("arch", "x86_64'"),
])
def test_invalid_spec_fields_are_rejected(field: str, value: object) -> None:
    with pytest.raises(SpecError):
        make_spec(**{field: value})


def test_paths_of_another_server_are_refused() -> None:
    spec = make_spec()
    with pytest.raises(SpecError):
        build_domain_xml(spec, InstancePaths(ROOT, str(uuid.uuid4())))
