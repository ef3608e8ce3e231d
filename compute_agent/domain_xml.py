"""libvirt domain XML for one server, built with ``xml.etree`` (never string formatting).

Every user-supplied string (server name, flavor name) only ever becomes element text or an
attribute value, which the XML library escapes; file paths come from ``InstancePaths`` (built
from validated UUIDs) and from the image cache.
"""

from __future__ import annotations

import re
import xml.etree.ElementTree as ET
from dataclasses import dataclass

from compute_agent.spec import InstancePaths, ServerSpec, SpecError, canonical_uuid

METADATA_NS = "https://minicloud.dev/xmlns/domain/1.0"
METADATA_PREFIX = "minicloud"


@dataclass(frozen=True)
class DomainMetadata:
    """The minicloud ``<metadata>`` element of a managed domain."""

    server_id: str
    project_id: str
    name: str
    flavor_id: str
    flavor_name: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    image_id: str
    host_id: str = ""  # "" for a domain defined before host ids were recorded


# Characters XML 1.0 cannot carry at all (not even escaped); they are dropped from text.
_NOT_XML_CHAR = re.compile("[^\u0009\u000a\u000d\u0020-\ud7ff\ue000-\ufffd\U00010000-\U0010ffff]")


def xml_text(value: str) -> str:
    """``value`` as XML can round-trip it: characters XML 1.0 cannot represent are dropped and
    CR / CRLF become LF (XML parsers normalize line ends). Escaping is ElementTree's job."""
    return _NOT_XML_CHAR.sub("", value).replace("\r\n", "\n").replace("\r", "\n")


def _sub(parent: ET.Element, tag: str, text: str | None = None, **attrs: str) -> ET.Element:
    el = ET.SubElement(parent, tag, attrs)
    if text is not None:
        el.text = xml_text(text)
    return el


def metadata_element(spec: ServerSpec) -> ET.Element:
    """The ``<minicloud:instance>`` element stored in the domain's ``<metadata>``."""
    ns = "{" + METADATA_NS + "}"
    inst = ET.Element(ns + "instance")
    _sub(inst, ns + "server", id=spec.server_id)
    _sub(inst, ns + "project", id=spec.project_id)
    _sub(inst, ns + "name", spec.name)
    _sub(inst, ns + "flavor", spec.flavor_name, id=spec.flavor_id, vcpus=str(spec.vcpus),
         ram_mb=str(spec.ram_mb), disk_gb=str(spec.disk_gb))
    _sub(inst, ns + "image", id=spec.image_id)
    if spec.host_id:
        _sub(inst, ns + "host", id=spec.host_id)
    return inst


def build_domain_xml(spec: ServerSpec, paths: InstancePaths) -> str:
    """Return the domain XML for ``spec`` with its files at ``paths``.

    Devices: the qcow2 overlay as virtio ``vda``; the NoCloud seed ISO as read-only virtio
    ``vdb``; a serial console logged to ``paths.console_log``; a virtio NIC on
    ``spec.network`` unless it is None; direct kernel boot when ``spec.kernel_path`` is set.

    Raises:
        SpecError: ``paths`` belongs to another server.
    """
    if paths.server_id != spec.server_id:
        raise SpecError("instance paths belong to another server")
    ET.register_namespace(METADATA_PREFIX, METADATA_NS)
    dom = ET.Element("domain", type=spec.virt_type)
    _sub(dom, "name", spec.domain_name)
    _sub(dom, "uuid", spec.server_id)
    # libvirt refuses titles with line breaks; the exact name is kept in the metadata.
    _sub(dom, "title", " ".join(spec.name.splitlines())[:200])
    md = _sub(dom, "metadata")
    md.append(metadata_element(spec))
    _sub(dom, "memory", str(spec.ram_mb), unit="MiB")
    _sub(dom, "currentMemory", str(spec.ram_mb), unit="MiB")
    _sub(dom, "vcpu", str(spec.vcpus), placement="static")

    os_el = _sub(dom, "os")
    _sub(os_el, "type", "hvm", arch=spec.arch)
    if spec.kernel_path is not None:
        _sub(os_el, "kernel", str(spec.kernel_path))
        if spec.initrd_path is not None:
            _sub(os_el, "initrd", str(spec.initrd_path))
        if spec.kernel_cmdline:
            _sub(os_el, "cmdline", spec.kernel_cmdline)
    else:
        _sub(os_el, "boot", dev="hd")

    features = _sub(dom, "features")
    _sub(features, "acpi")
    _sub(features, "apic")
    if spec.virt_type == "kvm":
        _sub(dom, "cpu", mode="host-passthrough")
    _sub(dom, "clock", offset="utc")
    _sub(dom, "on_poweroff", "destroy")
    _sub(dom, "on_reboot", "restart")
    _sub(dom, "on_crash", "destroy")

    devices = _sub(dom, "devices")
    root = _sub(devices, "disk", type="file", device="disk")
    _sub(root, "driver", name="qemu", type="qcow2")
    _sub(root, "source", file=str(paths.disk))
    _sub(root, "target", dev="vda", bus="virtio")

    seed = _sub(devices, "disk", type="file", device="disk")
    _sub(seed, "driver", name="qemu", type="raw")
    _sub(seed, "source", file=str(paths.seed))
    _sub(seed, "target", dev="vdb", bus="virtio")
    _sub(seed, "readonly")

    if spec.network is not None:
        nic = _sub(devices, "interface", type="network")
        _sub(nic, "source", network=spec.network)
        _sub(nic, "model", type="virtio")

    serial = _sub(devices, "serial", type="pty")
    _sub(serial, "log", file=str(paths.console_log), append="on")
    _sub(serial, "target", port="0")
    console = _sub(devices, "console", type="pty")
    _sub(console, "target", type="serial", port="0")
    _sub(devices, "memballoon", model="none")
    ET.indent(dom)
    return ET.tostring(dom, encoding="unicode")


def parse_metadata(domain_xml: str) -> DomainMetadata | None:
    """Read the minicloud metadata of a domain's XML; None when the domain is not ours.

    A domain counts as ours only when its metadata names a canonical server UUID equal to the
    domain's own UUID, so a foreign domain cannot claim to be a minicloud server by accident.
    """
    try:
        root = ET.fromstring(domain_xml)
    except ET.ParseError:
        return None
    ns = {"m": METADATA_NS}
    inst = root.find("metadata/m:instance", ns)
    if inst is None:
        return None
    server = inst.find("m:server", ns)
    project = inst.find("m:project", ns)
    flavor = inst.find("m:flavor", ns)
    try:
        server_id = canonical_uuid(server.get("id", "") if server is not None else "")
        project_id = canonical_uuid(project.get("id", "") if project is not None else "")
    except ValueError:
        return None
    if (root.findtext("uuid") or "").lower() != server_id:
        return None

    def flavor_int(attr: str) -> int:
        try:
            return int(flavor.get(attr, "0")) if flavor is not None else 0
        except ValueError:
            return 0

    image = inst.find("m:image", ns)
    host = inst.find("m:host", ns)
    return DomainMetadata(
        server_id=server_id, project_id=project_id,
        name=inst.findtext("m:name", "", ns),
        flavor_id=flavor.get("id", "") if flavor is not None else "",
        flavor_name=(flavor.text or "") if flavor is not None else "",
        vcpus=flavor_int("vcpus"), ram_mb=flavor_int("ram_mb"), disk_gb=flavor_int("disk_gb"),
        image_id=image.get("id", "") if image is not None else "",
        host_id=host.get("id", "") if host is not None else "")


def console_log_path(domain_xml: str) -> str | None:
    """The serial console log file named in a domain's XML, if any."""
    try:
        root = ET.fromstring(domain_xml)
    except ET.ParseError:
        return None
    log = root.find("devices/serial/log")
    if log is not None and log.get("file"):
        return log.get("file")
    src = root.find("devices/serial[@type='file']/source")
    return src.get("path") if src is not None else None
