"""The libvirt adapter: with its migration primitives (``compute_agent.migration``), the only
module of minicloud that imports ``libvirt``.

``Hypervisor`` wraps one libvirt connection (``qemu:///system`` in production, the test driver
``test:///default`` or ``test:///<abs path>/node.xml`` in tests and simulations). It only ever
touches domains that carry minicloud metadata (see ``domain_xml.parse_metadata``); any other
domain on the host is invisible to it. All operations are idempotent where the reconcile loop
needs them to be: starting a running domain, stopping a stopped one and destroying a missing
one are no-ops.

libvirt calls block; the agent runs them in a worker thread (``asyncio.to_thread``) if it is
asynchronous. One ``Hypervisor`` must not be shared by threads without a lock.
"""

from __future__ import annotations

import contextlib
import os
import shutil
import tempfile
import time
import xml.etree.ElementTree as ET
from collections.abc import Collection
from dataclasses import dataclass
from enum import StrEnum
from pathlib import Path
from typing import Any, Literal, NamedTuple

import libvirt

from compute_agent import host_files
from compute_agent.domain_xml import (
    DomainMetadata,
    build_domain_xml,
    console_log_path,
    parse_metadata,
)
from compute_agent.spec import InstancePaths, ServerSpec, canonical_uuid

Observed = Literal["running", "shutoff", "paused", "absent", "error"]

# libvirt reports errors through a global callback that prints to stderr by default; the
# adapter turns them into exceptions instead, so silence the printing once.
libvirt.registerErrorHandler(lambda _ctx, _err: None, None)


class HypervisorError(Exception):
    """A libvirt operation failed."""


class DomainNotFound(HypervisorError):
    """No minicloud-managed domain exists for the server id."""


class ForeignDomain(DomainNotFound):
    """A domain with this UUID exists but has no minicloud metadata: it is never touched."""


class DomainRunning(HypervisorError):
    """The operation needs the domain shut off."""


class PowerState(StrEnum):
    """A domain's power state as libvirt reports it."""

    NOSTATE = "nostate"
    RUNNING = "running"
    BLOCKED = "blocked"
    PAUSED = "paused"
    SHUTTING_DOWN = "shutting-down"
    SHUTOFF = "shutoff"
    CRASHED = "crashed"
    SUSPENDED = "suspended"

    @property
    def observed(self) -> Observed:
        """The state as the API's state machine sees it (``api.servers.states.Observed``)."""
        if self in (PowerState.SHUTOFF, PowerState.NOSTATE):
            return "shutoff"
        if self is PowerState.CRASHED:
            return "error"
        if self is PowerState.PAUSED:
            return "paused"
        return "running"


_STATES = {
    libvirt.VIR_DOMAIN_NOSTATE: PowerState.NOSTATE,
    libvirt.VIR_DOMAIN_RUNNING: PowerState.RUNNING,
    libvirt.VIR_DOMAIN_BLOCKED: PowerState.BLOCKED,
    libvirt.VIR_DOMAIN_PAUSED: PowerState.PAUSED,
    libvirt.VIR_DOMAIN_SHUTDOWN: PowerState.SHUTTING_DOWN,
    libvirt.VIR_DOMAIN_SHUTOFF: PowerState.SHUTOFF,
    libvirt.VIR_DOMAIN_CRASHED: PowerState.CRASHED,
    libvirt.VIR_DOMAIN_PMSUSPENDED: PowerState.SUSPENDED,
}

# Why a domain is shut off (libvirt's shutoff reasons), or ``crashed`` for a domain in the
# crashed state. ``shutdown`` (the guest powered off), ``saved``, ``migrated`` and
# ``from_snapshot`` are what the agent or the guest asked for; the others are not.
_SHUTOFF_REASONS = {
    libvirt.VIR_DOMAIN_SHUTOFF_UNKNOWN: "unknown",
    libvirt.VIR_DOMAIN_SHUTOFF_SHUTDOWN: "shutdown",
    libvirt.VIR_DOMAIN_SHUTOFF_DESTROYED: "destroyed",
    libvirt.VIR_DOMAIN_SHUTOFF_CRASHED: "crashed",
    libvirt.VIR_DOMAIN_SHUTOFF_MIGRATED: "migrated",
    libvirt.VIR_DOMAIN_SHUTOFF_SAVED: "saved",
    libvirt.VIR_DOMAIN_SHUTOFF_FAILED: "failed",
    libvirt.VIR_DOMAIN_SHUTOFF_FROM_SNAPSHOT: "from_snapshot",
    libvirt.VIR_DOMAIN_SHUTOFF_DAEMON: "daemon",
}


@dataclass(frozen=True)
class NodeInfo:
    """Capacity of the host as libvirt sees it."""

    vcpus: int
    memory_mb: int
    arch: str
    cpu_model: str


@dataclass(frozen=True)
class ManagedDomain:
    """A minicloud domain found on the host: its state and the metadata it was defined with."""

    server_id: str
    state: PowerState
    metadata: DomainMetadata


@dataclass(frozen=True)
class Address:
    """An IP address of a server, learned from libvirt's DHCP leases."""

    network: str | None
    mac: str
    address: str
    prefix: int
    version: int


@dataclass(frozen=True)
class DomainStats:
    """A running domain's cumulative counters and memory figures (libvirt bulk stats)."""

    cpu_time_ns: int
    vcpus: int
    memory_kib: int
    memory_unused_kib: int | None
    memory_rss_kib: int | None
    disk_read_bytes: int
    disk_write_bytes: int
    net_rx_bytes: int
    net_tx_bytes: int


_STATS_GROUPS = (libvirt.VIR_DOMAIN_STATS_CPU_TOTAL | libvirt.VIR_DOMAIN_STATS_BALLOON
                 | libvirt.VIR_DOMAIN_STATS_VCPU | libvirt.VIR_DOMAIN_STATS_INTERFACE
                 | libvirt.VIR_DOMAIN_STATS_BLOCK)


def parse_domain_stats(stats: dict[str, Any]) -> DomainStats:
    """``DomainStats`` from one record of ``virConnectGetAllDomainStats`` (flat typed
    parameters such as ``cpu.time``, ``block.0.rd.bytes``, ``net.1.tx.bytes``)."""

    def counter(key: str) -> int:
        value = stats.get(key, 0)
        return int(value) if isinstance(value, int) else 0

    def optional(key: str) -> int | None:
        value = stats.get(key)
        return int(value) if isinstance(value, int) else None

    def total(group: str, field: str) -> int:
        return sum(counter(f"{group}.{i}.{field}") for i in range(counter(f"{group}.count")))

    return DomainStats(
        cpu_time_ns=counter("cpu.time"), vcpus=counter("vcpu.current"),
        memory_kib=counter("balloon.current"), memory_unused_kib=optional("balloon.unused"),
        memory_rss_kib=optional("balloon.rss"),
        disk_read_bytes=total("block", "rd.bytes"), disk_write_bytes=total("block", "wr.bytes"),
        net_rx_bytes=total("net", "rx.bytes"), net_tx_bytes=total("net", "tx.bytes"))


def write_test_node_xml(path: Path, vcpus: int, memory_mb: int, arch: str = "x86_64",
                        network: str | None = "default") -> str:
    """Write a libvirt test-driver node file for a host of ``vcpus`` CPUs and ``memory_mb`` MiB.

    Returns the connection URI ``test://<abs path>``. With ``network`` set, the node has an
    active NAT network of that name (192.168.122.0/24 with a DHCP range) so servers can be
    given a NIC; the test driver reports fake lease addresses for their interfaces.

    Raises:
        ValueError: vcpus or memory_mb is not positive, or path is not absolute.
        OSError: the file cannot be written.
    """
    if vcpus < 1 or memory_mb < 1:
        raise ValueError("vcpus and memory_mb must be positive")
    path = Path(path)
    if not path.is_absolute():
        raise ValueError("the node file path must be absolute")
    node = ET.Element("node")
    cpu = ET.SubElement(node, "cpu")
    for tag, value in (("mhz", "2000"), ("model", arch), ("active", str(vcpus)),
                       ("nodes", "1"), ("sockets", "1"), ("cores", str(vcpus)),
                       ("threads", "1")):
        ET.SubElement(cpu, tag).text = value
    ET.SubElement(node, "memory").text = str(memory_mb * 1024)  # KiB
    if network is not None:
        net = ET.SubElement(node, "network")
        ET.SubElement(net, "name").text = network
        ET.SubElement(net, "forward", mode="nat")
        ET.SubElement(net, "bridge", name="virbr0")
        ip = ET.SubElement(net, "ip", address="192.168.122.1", netmask="255.255.255.0")
        dhcp = ET.SubElement(ip, "dhcp")
        ET.SubElement(dhcp, "range", start="192.168.122.2", end="192.168.122.254")
    ET.indent(node)
    path.write_text(ET.tostring(node, encoding="unicode") + "\n")
    return f"test://{path}"


def default_network_xml(name: str = "default") -> str:
    """XML of libvirt's usual NAT network (virbr0, 192.168.122.0/24, DHCP)."""
    net = ET.Element("network")
    ET.SubElement(net, "name").text = name
    ET.SubElement(net, "forward", mode="nat")
    ET.SubElement(net, "bridge", name="virbr0", stp="on", delay="0")
    ip = ET.SubElement(net, "ip", address="192.168.122.1", netmask="255.255.255.0")
    dhcp = ET.SubElement(ip, "dhcp")
    ET.SubElement(dhcp, "range", start="192.168.122.2", end="192.168.122.254")
    return ET.tostring(net, encoding="unicode")


PROBE_MARKER = b"MINICLOUD-GUEST-PROBE-OK"


def probe_boot_sector(marker: bytes = PROBE_MARKER) -> bytes:
    """A 512-byte x86 boot sector that writes ``marker`` + CRLF to COM1, then halts forever.

    Hand-assembled (16-bit real mode, loaded by the BIOS at 0000:7C00)::

        00  FA          cli
        01  31 C0       xor  ax, ax
        03  8E D8       mov  ds, ax            ; the string is addressed from segment 0
        05  BA F8 03    mov  dx, 0x3f8         ; COM1 data register
        08  BE 17 7C    mov  si, 0x7c17        ; the string, right after this code
        0B  FC          cld
        0C  AC          lodsb                  ; next: al = [ds:si++]
        0D  84 C0       test al, al
        0F  74 03       jz   halt              ; NUL ends the string
        11  EE          out  dx, al            ; QEMU's UART sends it without any setup
        12  EB F8       jmp  next
        14  F4          hlt                    ; halt: sleep with interrupts off, forever
        15  EB FD       jmp  halt
        17  <marker> 0D 0A 00
        ... zeros, then the 55 AA boot signature at offset 510

    Raises:
        ValueError: the marker does not fit or contains a NUL byte.
    """
    code = bytes.fromhex("FA 31C0 8ED8 BAF803 BE177C FC AC 84C0 7403 EE EBF8 F4 EBFD")
    text = marker + b"\r\n\0"
    if b"\0" in marker or len(code) + len(text) > 510:
        raise ValueError("the marker must be short and contain no NUL byte")
    return (code + text).ljust(510, b"\0") + b"\x55\xaa"


class GuestProbe(NamedTuple):
    """Whether a probe guest printed its marker, and why not (or how fast) in words."""

    printed: bool
    reason: str


def _probe_domain_xml(name: str, virt_type: str, disk: Path, log_file: Path) -> str:
    """A transient 16 MiB domain booting ``disk`` with its serial port logged to ``log_file``."""
    dom = ET.Element("domain", type=virt_type)
    ET.SubElement(dom, "name").text = name
    ET.SubElement(dom, "memory", unit="MiB").text = "16"
    ET.SubElement(dom, "vcpu").text = "1"
    os_el = ET.SubElement(dom, "os")
    ET.SubElement(os_el, "type").text = "hvm"
    ET.SubElement(os_el, "boot", dev="hd")
    if virt_type == "kvm":
        # The CPU mode server domains use under kvm (domain_xml): broken nested setups fail on it.
        ET.SubElement(dom, "cpu", mode="host-passthrough")
    devices = ET.SubElement(dom, "devices")
    disk_el = ET.SubElement(devices, "disk", type="file", device="disk")
    ET.SubElement(disk_el, "driver", name="qemu", type="raw")
    ET.SubElement(disk_el, "source", file=str(disk))
    ET.SubElement(disk_el, "target", dev="hda", bus="ide")
    serial = ET.SubElement(devices, "serial", type="pty")
    ET.SubElement(serial, "log", file=str(log_file), append="on")
    ET.SubElement(serial, "target", port="0")
    ET.SubElement(devices, "memballoon", model="none")
    return ET.tostring(dom, encoding="unicode")


class Hypervisor:
    """One libvirt connection, restricted to minicloud-managed domains.

    Raises:
        HypervisorError: (on construction) the connection cannot be opened.
    """

    def __init__(self, uri: str) -> None:
        self.uri = uri
        try:
            self._conn: Any = libvirt.open(uri)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"cannot connect to {uri}: {exc}") from exc

    def close(self) -> None:
        """Close the connection (idempotent)."""
        if self._conn is not None:
            with contextlib.suppress(libvirt.libvirtError):
                self._conn.close()
            self._conn = None

    @property
    def connection(self) -> Any:
        """The open ``libvirt.virConnect`` (for ``compute_agent.migration``).

        Raises:
            HypervisorError: the connection was closed.
        """
        if self._conn is None:
            raise HypervisorError(f"connection to {self.uri} is closed")
        return self._conn

    def domain(self, server_id: str) -> Any:
        """The ``libvirt.virDomain`` of a managed server (for ``compute_agent.migration``).

        Raises:
            SpecError: ``server_id`` is not a canonical UUID.
            DomainNotFound: no domain with that UUID, or one without minicloud metadata.
            HypervisorError: libvirt fails.
        """
        return self._lookup(server_id)

    def __enter__(self) -> Hypervisor:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- host -------------------------------------------------------------------------------

    def node_info(self) -> NodeInfo:
        """CPUs, memory and architecture of the host.

        Raises:
            HypervisorError: libvirt fails.
        """
        try:
            model, memory_mb, cpus, *_ = self._conn.getInfo()
            caps = ET.fromstring(self._conn.getCapabilities())
        except libvirt.libvirtError as exc:
            raise HypervisorError(str(exc)) from exc
        # getInfo's "model" is the host architecture on the QEMU driver (e.g. x86_64) and the
        # node file's <cpu><model> on the test driver, whose capabilities always say i686.
        return NodeInfo(vcpus=int(cpus), memory_mb=int(memory_mb), arch=str(model),
                        cpu_model=caps.findtext("host/cpu/model") or "")

    def virt_types(self, arch: str | None = None) -> list[str]:
        """Domain types libvirt offers for hvm guests of ``arch`` (default: the host's).

        E.g. ``["qemu", "kvm"]`` on a KVM host. Listing kvm does not prove guests boot under
        it (nested KVM may be offered but broken), so callers may still prefer ``qemu``.

        Raises:
            HypervisorError: libvirt fails.
        """
        arch = arch or self.node_info().arch
        try:
            caps = ET.fromstring(self._conn.getCapabilities())
        except libvirt.libvirtError as exc:
            raise HypervisorError(str(exc)) from exc
        types: list[str] = []
        for guest in caps.findall("guest"):
            arch_el = guest.find("arch")
            if guest.findtext("os_type") == "hvm" and arch_el is not None \
                    and arch_el.get("name") == arch:
                types += [d.get("type", "") for d in arch_el.findall("domain")]
        return sorted(set(types) - {""})

    def guest_prints(self, virt_type: str, workdir: Path, timeout: float,
                     sector: bytes | None = None) -> GuestProbe:
        """Boot a one-sector guest as a ``virt_type`` domain; report whether it printed.

        The guest (``probe_boot_sector``) writes ``PROBE_MARKER`` to its serial port, which
        libvirt logs to a file in a fresh directory under ``workdir``; the probe waits up to
        ``timeout`` seconds for the marker, then destroys the transient domain and removes its
        files. The domain uses the CPU mode server domains use under that type
        (``domain_xml``), so a working probe means a working server. Starting is not enough:
        nested KVM can start a domain that libvirt calls running while its vCPU never executes
        a single instruction usefully. ``sector`` replaces the guest (tests).

        Never raises: a guest that fails, or files that cannot be written, give the reason.
        """
        name = f"minicloud-probe-{virt_type}-{os.getpid()}-{time.time_ns()}"
        workdir = Path(workdir)
        tmp: Path | None = None
        try:
            workdir.mkdir(parents=True, exist_ok=True)
            tmp = Path(tempfile.mkdtemp(dir=workdir, prefix=".probe-"))
            host_files.share_dir(tmp)
            disk, log_file = tmp / "probe.img", tmp / "console.log"
            disk.write_bytes(probe_boot_sector() if sector is None else sector)
            host_files.share_file(disk)
            # virtlogd keeps an existing log's owner and mode when appending; a log it creates
            # is 0600 root, which an agent that is not root could not read.
            log_file.touch()
            host_files.share_file(log_file)
        except OSError as exc:
            if tmp is not None:
                shutil.rmtree(tmp, ignore_errors=True)
            return GuestProbe(False, f"cannot write the probe's files under {workdir}: {exc}")
        try:
            started = time.monotonic()
            try:
                dom = self._conn.createXML(_probe_domain_xml(name, virt_type, disk, log_file), 0)
            except libvirt.libvirtError as exc:
                return GuestProbe(False, f"a {virt_type} guest does not start: {exc}")
            try:
                deadline = started + timeout
                while True:
                    with contextlib.suppress(OSError):
                        if PROBE_MARKER in log_file.read_bytes():
                            return GuestProbe(True, f"a {virt_type} guest printed in "
                                              f"{time.monotonic() - started:.1f} s")
                    if time.monotonic() >= deadline:
                        return GuestProbe(False, f"a {virt_type} guest started but printed "
                                          f"nothing within {timeout:g} s")
                    time.sleep(0.05)
            finally:
                with contextlib.suppress(libvirt.libvirtError):
                    dom.destroy()
        finally:
            shutil.rmtree(tmp, ignore_errors=True)

    def kvm_probe(self, workdir: Path, timeout: float) -> GuestProbe:
        """Whether KVM really runs guests here: listed by libvirt and ``guest_prints``."""
        if "kvm" not in self.virt_types():
            return GuestProbe(False, "libvirt offers no kvm domain type")
        return self.guest_prints("kvm", workdir, timeout)

    def ensure_connected(self) -> None:
        """Reopen the connection if libvirtd went away (e.g. was restarted).

        Raises:
            HypervisorError: the connection cannot be reopened.
        """
        try:
            if self._conn is not None and self._conn.isAlive():
                return
        except libvirt.libvirtError:
            pass
        try:
            self._conn = libvirt.open(self.uri)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"cannot reconnect to {self.uri}: {exc}") from exc

    @staticmethod
    def disk_gb(path: Path) -> int:
        """Total size in GiB (rounded down) of the filesystem holding ``path``.

        Raises:
            OSError: ``path`` does not exist.
        """
        return shutil.disk_usage(path).total // 1024**3

    def ensure_network(self, name: str = "default") -> None:
        """Make sure the libvirt network ``name`` exists, is started and autostarts.

        A missing network is defined as libvirt's usual NAT network (``default_network_xml``).

        Raises:
            HypervisorError: libvirt cannot define or start it.
        """
        try:
            try:
                net = self._conn.networkLookupByName(name)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() != libvirt.VIR_ERR_NO_NETWORK:
                    raise
                net = self._conn.networkDefineXML(default_network_xml(name))
            if not net.isActive():
                net.create()
            if not net.autostart():
                net.setAutostart(1)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"network {name}: {exc}") from exc

    # -- discovery --------------------------------------------------------------------------

    def list_managed_domains(self) -> list[ManagedDomain]:
        """All minicloud domains (defined or running) with their state and metadata.

        Domains without valid minicloud metadata are skipped, never touched.

        Raises:
            HypervisorError: libvirt cannot list domains.
        """
        try:
            domains = self._conn.listAllDomains(0)
        except libvirt.libvirtError as exc:
            raise HypervisorError(str(exc)) from exc
        found = []
        for dom in domains:
            try:
                meta = parse_metadata(dom.XMLDesc(0))
                state = dom.state()[0]
            except libvirt.libvirtError:
                continue  # undefined between listing and reading: not there any more
            if meta is not None:
                found.append(ManagedDomain(meta.server_id, _STATES.get(state, PowerState.NOSTATE),
                                           meta))
        return found

    def list_managed(self) -> dict[str, PowerState]:
        """{server_id: power state} of every minicloud domain on the host.

        Raises:
            HypervisorError: libvirt cannot list domains.
        """
        return {d.server_id: d.state for d in self.list_managed_domains()}

    def state(self, server_id: str) -> PowerState | None:
        """Power state of a server's domain, or None when it has no managed domain.

        Raises:
            SpecError: ``server_id`` is not a canonical UUID.
            HypervisorError: libvirt fails.
        """
        try:
            dom = self._lookup(server_id)
            return _STATES.get(dom.state()[0], PowerState.NOSTATE)
        except DomainNotFound:
            return None
        except libvirt.libvirtError as exc:
            raise HypervisorError(str(exc)) from exc

    def stop_reason(self, server_id: str) -> str | None:
        """Why the server's domain is not running: libvirt's shutoff reason (``destroyed``,
        ``crashed``, ``shutdown``, ``unknown``, ...), ``crashed`` for a crashed domain; None
        when it runs, is paused or has no managed domain.

        Raises:
            SpecError: ``server_id`` is not a canonical UUID.
            HypervisorError: libvirt fails.
        """
        try:
            state, reason = self._lookup(server_id).state()[:2]
        except DomainNotFound:
            return None
        except libvirt.libvirtError as exc:
            raise HypervisorError(str(exc)) from exc
        if state == libvirt.VIR_DOMAIN_CRASHED:
            return "crashed"
        if state != libvirt.VIR_DOMAIN_SHUTOFF:
            return None
        return _SHUTOFF_REASONS.get(reason, "unknown")

    def observed(self, server_id: str) -> Observed:
        """The state in the API's vocabulary: running | shutoff | paused | absent | error.

        Raises:
            SpecError: ``server_id`` is not a canonical UUID.
            HypervisorError: libvirt fails.
        """
        st = self.state(server_id)
        return "absent" if st is None else st.observed

    def domain_xml(self, server_id: str) -> str:
        """The current XML of a server's domain.

        Raises:
            DomainNotFound: no managed domain for ``server_id``.
            HypervisorError: libvirt fails.
        """
        try:
            return str(self._lookup(server_id).XMLDesc(0))
        except libvirt.libvirtError as exc:
            raise HypervisorError(str(exc)) from exc

    # -- lifecycle --------------------------------------------------------------------------

    def define(self, spec: ServerSpec, paths: InstancePaths) -> None:
        """Define (or re-define with the same UUID) the persistent domain of ``spec``.

        Does not start it. The disk, seed and kernel files must exist before ``start``.

        Raises:
            HypervisorError: libvirt rejects the definition, or a non-minicloud domain already
                uses this UUID or name.
        """
        self._refuse_foreign(spec.server_id)
        try:
            self._conn.defineXML(build_domain_xml(spec, paths))
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"define {spec.domain_name}: {exc}") from exc

    def redefine(self, spec: ServerSpec, paths: InstancePaths) -> None:
        """Replace a shut-off domain's definition, e.g. with a resized flavor.

        Raises:
            DomainNotFound: no managed domain for the server.
            DomainRunning: the domain is not shut off.
            HypervisorError: libvirt rejects the definition.
        """
        dom = self._lookup(spec.server_id)
        try:
            if dom.isActive():
                raise DomainRunning(f"{spec.domain_name} must be shut off to be redefined")
        except libvirt.libvirtError as exc:
            raise HypervisorError(str(exc)) from exc
        self.define(spec, paths)

    def start(self, server_id: str) -> bool:
        """Start a defined domain; return False when it was already running.

        Raises:
            DomainNotFound: no managed domain for ``server_id``.
            HypervisorError: libvirt cannot start it (missing file, bad image, ...).
        """
        dom = self._lookup(server_id)
        try:
            if dom.isActive():
                return False
            dom.create()
            return True
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"start {dom.name()}: {exc}") from exc

    def shutdown(self, server_id: str, timeout: float = 60.0, poll: float = 0.5) -> bool:
        """Stop a domain: ACPI shutdown, then destroy if still running after ``timeout`` s.

        Returns True when it stopped gracefully (or was already off), False when forced.
        ``timeout`` 0 destroys at once.

        Raises:
            DomainNotFound: no managed domain for ``server_id``.
            HypervisorError: libvirt fails.
        """
        dom = self._lookup(server_id)
        try:
            if not dom.isActive():
                return True
            if timeout > 0:
                # The guest may vanish meanwhile; the destroy below settles any failure.
                with contextlib.suppress(libvirt.libvirtError):
                    dom.shutdown()
                deadline = time.monotonic() + timeout
                while time.monotonic() < deadline:
                    if not dom.isActive():
                        return True
                    time.sleep(poll)
            if dom.isActive():
                dom.destroy()
            return False
        except libvirt.libvirtError as exc:
            if not self._is_active_safe(dom):
                return False
            raise HypervisorError(f"shutdown {server_id}: {exc}") from exc

    def request_shutdown(self, server_id: str) -> bool:
        """Send the ACPI power-button request and return at once (no waiting, no destroy).

        Returns False when the domain is already shut off. For callers that wait for the
        guest without blocking (the agent's loop), then ``shutdown(timeout=0)`` to force.

        Raises:
            DomainNotFound: no managed domain for ``server_id``.
            HypervisorError: libvirt fails.
        """
        dom = self._lookup(server_id)
        try:
            if not dom.isActive():
                return False
            dom.shutdown()
            return True
        except libvirt.libvirtError as exc:
            if not self._is_active_safe(dom):
                return False
            raise HypervisorError(f"shutdown request {server_id}: {exc}") from exc

    def reboot(self, server_id: str, hard: bool = False) -> None:
        """Reboot a domain.

        Soft: an ACPI reboot request to the guest (a shut-off domain is simply started).
        Hard: power-cycle, i.e. destroy if running and start again from the persistent
        definition (which also applies a changed definition).

        Raises:
            DomainNotFound: no managed domain for ``server_id``.
            HypervisorError: libvirt fails.
        """
        dom = self._lookup(server_id)
        try:
            if hard:
                if dom.isActive():
                    dom.destroy()
                dom.create()
            elif dom.isActive():
                dom.reboot(0)
            else:
                dom.create()
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"reboot {server_id}: {exc}") from exc

    def pause(self, server_id: str) -> bool:
        """Freeze a running domain's vCPUs (libvirt suspend); its memory stays allocated.

        Returns False when it was not running (already paused, or shut off).

        Raises:
            DomainNotFound: no managed domain for ``server_id``.
            HypervisorError: libvirt fails.
        """
        dom = self._lookup(server_id)
        try:
            if dom.state()[0] != libvirt.VIR_DOMAIN_RUNNING:
                return False
            dom.suspend()
            return True
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"pause {server_id}: {exc}") from exc

    def unpause(self, server_id: str) -> bool:
        """Let a paused domain's vCPUs run again (libvirt resume), where they stopped.

        Returns False when it was not paused.

        Raises:
            DomainNotFound: no managed domain for ``server_id``.
            HypervisorError: libvirt fails.
        """
        dom = self._lookup(server_id)
        try:
            if dom.state()[0] != libvirt.VIR_DOMAIN_PAUSED:
                return False
            dom.resume()
            return True
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"unpause {server_id}: {exc}") from exc

    def destroy_and_undefine(self, server_id: str) -> bool:
        """Power off and undefine a server's domain; return False when there was none.

        Files are not removed here: call ``InstancePaths.remove()`` after this succeeds.

        Raises:
            SpecError: ``server_id`` is not a canonical UUID.
            HypervisorError: libvirt fails.
        """
        try:
            dom = self._lookup(server_id)
        except DomainNotFound:
            return False
        try:
            if dom.isActive():
                dom.destroy()
            flags = (libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                     | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                     | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
            try:
                dom.undefineFlags(flags)
            except libvirt.libvirtError as exc:
                if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                    return True
                dom.undefine()
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return True
            raise HypervisorError(f"destroy {server_id}: {exc}") from exc
        return True

    # -- addresses and console --------------------------------------------------------------

    def addresses(self, server_id: str) -> list[Address]:
        """IP addresses of a running server from libvirt's DHCP leases (empty when none).

        Raises:
            DomainNotFound: no managed domain for ``server_id``.
            HypervisorError: libvirt fails for a reason other than "no lease / not running".
        """
        dom = self._lookup(server_id)
        try:
            if not dom.isActive():
                return []
            xml = dom.XMLDesc(0)
            ifaces = dom.interfaceAddresses(libvirt.VIR_DOMAIN_INTERFACE_ADDRESSES_SRC_LEASE)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() in (libvirt.VIR_ERR_NO_SUPPORT,
                                        libvirt.VIR_ERR_OPERATION_INVALID,
                                        libvirt.VIR_ERR_NO_DOMAIN):
                return []
            raise HypervisorError(f"addresses {server_id}: {exc}") from exc
        networks = _interface_networks(xml)
        result = []
        for iface in (ifaces or {}).values():
            mac = str(iface.get("hwaddr") or "").lower()
            for a in iface.get("addrs") or []:
                version = 6 if a.get("type") == libvirt.VIR_IP_ADDR_TYPE_IPV6 else 4
                result.append(Address(networks.get(mac), mac, str(a["addr"]),
                                      int(a.get("prefix", 0)), version))
        return result

    def all_addresses(self) -> dict[str, list[Address]]:
        """{server_id: addresses} for every running managed domain that has a lease.

        Raises:
            HypervisorError: libvirt fails.
        """
        out: dict[str, list[Address]] = {}
        for d in self.list_managed_domains():
            if d.state.observed != "running":
                continue
            try:
                addrs = self.addresses(d.server_id)
            except DomainNotFound:
                continue
            if addrs:
                out[d.server_id] = addrs
        return out

    def all_domain_names(self) -> list[str]:
        """Names of every domain on the host, managed or not (read-only, for diagnostics).

        Raises:
            HypervisorError: libvirt cannot list domains.
        """
        try:
            return sorted(str(d.name()) for d in self._conn.listAllDomains(0))
        except libvirt.libvirtError as exc:
            raise HypervisorError(str(exc)) from exc

    def console_log_file(self, server_id: str) -> Path | None:
        """Path of the server's serial console log, from its domain XML.

        Raises:
            DomainNotFound: no managed domain for ``server_id``.
            HypervisorError: libvirt fails.
        """
        path = console_log_path(self.domain_xml(server_id))
        return Path(path) if path else None

    def console_tail(self, server_id: str, max_bytes: int = 64 * 1024) -> str:
        """The last ``max_bytes`` bytes of the serial console log, decoded as UTF-8.

        Returns "" when the log does not exist yet (never booted, or a test-driver host).

        Raises:
            DomainNotFound: no managed domain for ``server_id``.
            HypervisorError: libvirt fails.
        """
        path = self.console_log_file(server_id)
        return read_tail(path, max_bytes) if path is not None else ""

    # -- guest statistics -------------------------------------------------------------------

    def domain_stats(self, server_ids: Collection[str]) -> dict[str, DomainStats]:
        """Bulk statistics of the running domains among ``server_ids`` (one libvirt call).

        Counters libvirt does not report (the test driver reports none) are 0; memory
        figures it does not report are None.

        Raises:
            HypervisorError: libvirt fails.
        """
        wanted = set(server_ids)
        if not wanted:
            return {}
        try:
            records = self._conn.getAllDomainStats(
                _STATS_GROUPS, libvirt.VIR_CONNECT_GET_ALL_DOMAINS_STATS_ACTIVE)
        except libvirt.libvirtError as exc:
            raise HypervisorError(f"domain statistics: {exc}") from exc
        found: dict[str, DomainStats] = {}
        for dom, stats in records:
            try:
                sid = str(dom.UUIDString())
            except libvirt.libvirtError:
                continue  # gone between the call and now
            if sid in wanted:
                found[sid] = parse_domain_stats(stats)
        return found

    # -- internals --------------------------------------------------------------------------

    def _lookup(self, server_id: str) -> Any:
        """The managed domain of ``server_id``.

        Raises:
            SpecError: ``server_id`` is not a canonical UUID.
            DomainNotFound: no domain with that UUID, or one without minicloud metadata.
            HypervisorError: libvirt fails.
        """
        sid = canonical_uuid(server_id, "server_id")
        try:
            dom = self._conn.lookupByUUIDString(sid)
            meta = parse_metadata(dom.XMLDesc(0))
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                raise DomainNotFound(sid) from exc
            raise HypervisorError(str(exc)) from exc
        if meta is None or meta.server_id != sid:
            raise ForeignDomain(f"{sid} is not a minicloud domain")
        return dom

    def _refuse_foreign(self, server_id: str) -> None:
        """Raise when a domain without minicloud metadata already holds this UUID."""
        try:
            self._lookup(server_id)
        except ForeignDomain as exc:
            raise HypervisorError(
                f"a foreign domain already uses UUID {server_id}; not touching it") from exc
        except DomainNotFound:
            pass

    @staticmethod
    def _is_active_safe(dom: Any) -> bool:
        try:
            return bool(dom.isActive())
        except libvirt.libvirtError:
            return False


def _interface_networks(domain_xml: str) -> dict[str, str]:
    """{mac: network name} of a domain's network interfaces."""
    try:
        root = ET.fromstring(domain_xml)
    except ET.ParseError:
        return {}
    out = {}
    for iface in root.findall("devices/interface"):
        mac = iface.find("mac")
        src = iface.find("source")
        if mac is not None and src is not None and src.get("network"):
            out[mac.get("address", "").lower()] = src.get("network", "")
    return out


def read_tail(path: Path, max_bytes: int) -> str:
    """The last ``max_bytes`` bytes of ``path`` as text ("" when missing); invalid UTF-8 is
    replaced, a character cut at the start is dropped."""
    try:
        with open(path, "rb") as f:
            size = os.fstat(f.fileno()).st_size
            f.seek(max(0, size - max_bytes))
            data = f.read(max_bytes)
    except FileNotFoundError:
        return ""
    return data.decode("utf-8", errors="replace")

