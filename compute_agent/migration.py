"""libvirt primitives for moving a server's domain between hosts (live and cold).

Live migration is libvirt peer-to-peer with storage copy (``VIR_MIGRATE_LIVE | PEER2PEER |
PERSIST_DEST | UNDEFINE_SOURCE | NON_SHARED_INC``): the source libvirtd connects to the
destination's libvirtd (``dest_libvirt_uri``, e.g. ``qemu+tcp://<addr>/system``), QEMU's
stream goes to ``migrate_uri`` (``tcp://<addr>``, a port from the destination's
``migration_port_min..max``), and the writable disks are mirrored over NBD into the empty
overlays ``prepare_incoming`` made on the destination. The destination gets the domain with
its own file paths (``rewrite_paths``) both for the running guest and for the persistent
definition. On any failure libvirt resumes the guest on the source; this module checks that
it did.

Cold moves of a shut-off domain are definition-only operations here (``export_definition``,
``import_definition``, ``forget_definition``); how disk files travel is the caller's choice.

The agent runs these blocking calls in a worker thread. Every server is looked up through
``Hypervisor.domain`` so only minicloud-managed domains are ever touched.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import re
import threading
import time
import xml.etree.ElementTree as ET
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from pathlib import Path, PurePosixPath
from typing import Any, Literal

import libvirt

from compute_agent import host_files
from compute_agent.domain_xml import METADATA_NS, METADATA_PREFIX, parse_metadata
from compute_agent.hypervisor import (
    DomainNotFound,
    DomainRunning,
    ForeignDomain,
    Hypervisor,
    HypervisorError,
)
from compute_agent.imagecache import create_overlay_bytes
from compute_agent.seed import write_seed
from compute_agent.spec import InstancePaths, ServerSpec, canonical_uuid

LIVE_FLAGS = (libvirt.VIR_MIGRATE_LIVE | libvirt.VIR_MIGRATE_PEER2PEER
              | libvirt.VIR_MIGRATE_PERSIST_DEST | libvirt.VIR_MIGRATE_UNDEFINE_SOURCE
              | libvirt.VIR_MIGRATE_NON_SHARED_INC)
# How often the job's progress is read while a migration runs.
POLL_INTERVAL_S = 0.25
# After an abort (asked for, or on timeout) libvirt unwinds the job: the QEMU side cancels at
# once, but the NBD mirror and the destination's cleanup take a moment. Bounded, so a wedged
# daemon cannot hang the agent.
ABORT_GRACE_S = 120.0
# How often an abort is asked again while the job has not ended.
ABORT_RETRY_S = 1.0

# Elements whose text is a file path, and attributes that hold a file path wherever they occur
# (disk/source@file, serial/log@file, serial/source@path, filesystem/source@dir, ...).
_PATH_TEXT = ("os/kernel", "os/initrd", "os/dtb", "os/loader", "os/nvram")
_PATH_ATTRS = ("file", "path", "dir")


# libvirt's defaults: the libvirtd listeners (libvirtd-tls.socket / libvirtd-tcp.socket) and
# QEMU's incoming migration ports (qemu.conf migration_port_min / migration_port_max).
LIBVIRT_PORTS = {"tls": 16514, "tcp": 16509}
DEFAULT_MIGRATION_PORTS = (49152, 49215)
_DNS_NAME = re.compile(r"^(?=.{1,253}$)([A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)"
                       r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*\.?$")


class MigrationError(Exception):
    """A migration primitive failed."""


class MigrationFailed(MigrationError):
    """A live migration failed, timed out or was aborted; the guest still runs on the source.

    ``source_state`` is the domain's observed state on the source afterwards ("running" in
    every case libvirt handled; anything else deserves a fault on the server). ``settled`` is
    False only when libvirt's migration call had not returned ``ABORT_GRACE_S`` after the
    abort: then the job may still finish, and where the guest ends must be read from both
    hosts before anything is cleaned up.
    """

    def __init__(self, message: str, *, source_state: str = "running",
                 aborted: bool = False, timed_out: bool = False, settled: bool = True) -> None:
        super().__init__(message)
        self.source_state = source_state
        self.aborted = aborted
        self.timed_out = timed_out
        self.settled = settled


@dataclass(frozen=True)
class MigrationProgress:
    """One reading of a running migration job (bytes; memory and disks together)."""

    data_total: int
    data_processed: int
    data_remaining: int
    elapsed_ms: int


@dataclass(frozen=True)
class MigrationStats:
    """The outcome of a completed live migration.

    ``elapsed_ms``: the job's duration (the destination's completed-job ``time_elapsed``, or
    the wall time measured here when those stats are not readable). ``downtime_ms``: how long
    the guest was paused for the switch-over, from the destination's completed-job stats;
    None when the destination's libvirt could not be asked.
    """

    elapsed_ms: int
    downtime_ms: int | None
    data_processed: int


@dataclass(frozen=True)
class MigrationEndpoint:
    """How other hosts reach this host as a live-migration destination (what its agent
    registers): ``address`` (an IP address or DNS name), the libvirtd listener
    (``transport``, ``libvirt_port``; None: libvirt's default port for the transport) and the
    range QEMU takes incoming migration ports from (``port_min``..``port_max``).

    Raises:
        MigrationError: (on construction) the address or a port is invalid.
    """

    address: str
    transport: Literal["tls", "tcp"] = "tls"
    libvirt_port: int | None = None
    port_min: int = DEFAULT_MIGRATION_PORTS[0]
    port_max: int = DEFAULT_MIGRATION_PORTS[1]

    def __post_init__(self) -> None:
        try:
            ipaddress.ip_address(self.address)
        except ValueError:
            if not _DNS_NAME.match(self.address):
                raise MigrationError(
                    f"migration address is neither an IP address nor a DNS name: "
                    f"{self.address!r}") from None
        if self.transport not in LIBVIRT_PORTS:
            raise MigrationError(f"migration transport must be tls or tcp: {self.transport!r}")
        for port in (self.libvirt_port, self.port_min, self.port_max):
            if port is not None and not 0 < port < 65536:
                raise MigrationError(f"port out of range: {port}")
        if self.port_min > self.port_max:
            raise MigrationError(f"empty migration port range {self.port_min}..{self.port_max}")

    @property
    def _host(self) -> str:
        return f"[{self.address}]" if ":" in self.address else self.address

    @property
    def libvirt_uri(self) -> str:
        """The ``dest_libvirt_uri`` of ``live_migrate``: this host's libvirtd as the source
        libvirtd reaches it (``qemu+tls://<address>:16514/system``)."""
        port = self.libvirt_port or LIBVIRT_PORTS[self.transport]
        return f"qemu+{self.transport}://{self._host}:{port}/system"

    @property
    def migrate_uri(self) -> str:
        """The ``migrate_uri`` of ``live_migrate``: where QEMU sends memory and disks
        (``tcp://<address>``; the port comes from this host's range)."""
        return f"tcp://{self._host}"


def read_qemu_migration_ports(qemu_conf: Path) -> tuple[int, int]:
    """(``migration_port_min``, ``migration_port_max``) as QEMU's libvirt driver reads them
    from ``qemu_conf``; libvirt's defaults for a setting (or file) that is absent.

    Raises:
        MigrationError: a value is not a port number, or the range is empty.
        OSError: the file exists but cannot be read.
    """
    values = dict(zip(("migration_port_min", "migration_port_max"), DEFAULT_MIGRATION_PORTS,
                      strict=True))
    try:
        text = qemu_conf.read_text()
    except FileNotFoundError:
        text = ""
    for line in text.splitlines():
        key, sep, value = line.split("#", 1)[0].partition("=")
        key = key.strip()
        if sep and key in values:
            try:
                values[key] = int(value.strip().strip('"'))
            except ValueError as exc:
                raise MigrationError(f"{qemu_conf}: {key} is not a number: {value.strip()!r}") \
                    from exc
    low, high = values["migration_port_min"], values["migration_port_max"]
    if not 0 < low <= high < 65536:
        raise MigrationError(f"{qemu_conf}: bad migration port range {low}..{high}")
    return low, high


def local_endpoint(address: str, *, transport: Literal["tls", "tcp"] = "tls",
                   libvirt_port: int | None = None,
                   qemu_conf: Path = Path("/etc/libvirt/qemu.conf")) -> MigrationEndpoint:
    """This host's ``MigrationEndpoint``: the given address and listener, and the port range
    of the local QEMU driver's ``qemu_conf`` (agent settings ``migration_address``,
    ``migration_transport``, ``migration_libvirt_port``, ``qemu_conf``).

    Raises:
        MigrationError: the address, a port or the configured range is invalid.
        OSError: ``qemu_conf`` exists but cannot be read.
    """
    low, high = read_qemu_migration_ports(qemu_conf)
    return MigrationEndpoint(address=address, transport=transport, libvirt_port=libvirt_port,
                             port_min=low, port_max=high)


# -- domain XML ------------------------------------------------------------------------------


def _map_path(value: str, prefixes: list[tuple[PurePosixPath, PurePosixPath]]) -> str | None:
    """``value`` under the first (longest) matching source prefix moved to its destination."""
    path = PurePosixPath(value)
    if not path.is_absolute():
        return None
    for src, dst in prefixes:
        if path == src or src in path.parents:
            return str(dst / path.relative_to(src))
    return None


def rewrite_paths(domain_xml: str, path_map: Mapping[str, str]) -> str:
    """Return ``domain_xml`` with every file path under a key of ``path_map`` moved under its
    value: disk sources and backing stores, kernel/initrd/loader/nvram, serial and console
    log and source files, filesystem directories.

    Prefixes match whole path components (``/a/b`` maps ``/a/b/c`` but not ``/a/bc``); the
    longest matching prefix wins. Paths under no prefix are left alone. Parsed and written
    with ``xml.etree``, so no path or name can change the document's structure.

    Raises:
        MigrationError: ``domain_xml`` is not XML, or a prefix is not an absolute path.
    """
    prefixes: list[tuple[PurePosixPath, PurePosixPath]] = []
    for src, dst in path_map.items():
        s, d = PurePosixPath(src), PurePosixPath(dst)
        if not (s.is_absolute() and d.is_absolute()):
            raise MigrationError(f"path prefixes must be absolute: {src!r} -> {dst!r}")
        prefixes.append((s, d))
    prefixes.sort(key=lambda pair: len(pair[0].parts), reverse=True)
    ET.register_namespace(METADATA_PREFIX, METADATA_NS)
    try:
        root = ET.fromstring(domain_xml)
    except ET.ParseError as exc:
        raise MigrationError(f"domain XML does not parse: {exc}") from exc
    for el in root.iter():
        for attr in _PATH_ATTRS:
            value = el.get(attr)
            if value is not None:
                mapped = _map_path(value, prefixes)
                if mapped is not None:
                    el.set(attr, mapped)
    for tag in _PATH_TEXT:
        for el in root.findall(tag):
            if el.text:
                mapped = _map_path(el.text.strip(), prefixes)
                if mapped is not None:
                    el.text = mapped
    return ET.tostring(root, encoding="unicode")


def set_host_id(domain_xml: str, host_id: str) -> str:
    """Return ``domain_xml`` with its minicloud metadata naming ``host_id`` as its host.

    A domain moved to another host must carry that host's id: an agent quarantines domains
    whose metadata names another host (docs/operations.md, "One agent per libvirtd").

    Raises:
        MigrationError: ``domain_xml`` is not a minicloud domain definition.
        SpecError: ``host_id`` is not a canonical UUID.
    """
    hid = canonical_uuid(host_id, "host_id")
    ET.register_namespace(METADATA_PREFIX, METADATA_NS)
    try:
        root = ET.fromstring(domain_xml)
    except ET.ParseError as exc:
        raise MigrationError(f"domain XML does not parse: {exc}") from exc
    ns = "{" + METADATA_NS + "}"
    inst = root.find(f"metadata/{ns}instance")
    if inst is None or parse_metadata(domain_xml) is None:
        raise MigrationError("not a minicloud domain definition")
    host = inst.find(ns + "host")
    if host is None:
        host = ET.SubElement(inst, ns + "host")
    host.set("id", hid)
    return ET.tostring(root, encoding="unicode")


def writable_disk_targets(domain_xml: str) -> list[str]:
    """Target names (``vda``...) of the file-backed disks that are neither read-only nor
    shareable: the disks a storage-copy migration must mirror.

    Raises:
        MigrationError: ``domain_xml`` is not XML.
    """
    try:
        root = ET.fromstring(domain_xml)
    except ET.ParseError as exc:
        raise MigrationError(f"domain XML does not parse: {exc}") from exc
    targets = []
    for disk in root.findall("devices/disk"):
        target = disk.find("target")
        if (disk.get("device", "disk") == "disk" and disk.find("source") is not None
                and disk.find("readonly") is None and disk.find("shareable") is None
                and target is not None and target.get("dev")):
            targets.append(str(target.get("dev")))
    return targets


def migratable_xml(hv: Hypervisor, server_id: str) -> tuple[str, str]:
    """(live XML, persistent XML) of a server's domain in libvirt's migratable form, to be
    passed through ``rewrite_paths`` as ``dest_xml`` and ``persist_xml`` of ``live_migrate``.

    Raises:
        DomainNotFound: no managed domain for ``server_id``.
        HypervisorError: libvirt fails.
    """
    dom = hv.domain(server_id)
    try:
        live = str(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE))
        persistent = str(dom.XMLDesc(libvirt.VIR_DOMAIN_XML_MIGRATABLE
                                     | libvirt.VIR_DOMAIN_XML_INACTIVE))
    except libvirt.libvirtError as exc:
        raise HypervisorError(f"dump XML of {server_id}: {exc}") from exc
    return live, persistent


# -- destination files -----------------------------------------------------------------------


def prepare_incoming(spec: ServerSpec, paths: InstancePaths, *, virtual_size: int,
                     seed_iso: bytes | None = None, network_config: str | None = None) -> None:
    """Make the destination's files for an incoming server before a storage-copy migration.

    Creates the instance directory (0750, QEMU's group), an empty console log, an empty qcow2
    overlay of exactly ``virtual_size`` bytes backed by ``spec.image_path`` (the base image in
    this host's cache, read as ``spec.image_format``), and the seed ISO: ``seed_iso`` as given
    (the source's bytes, so the guest reads the same blocks), or rebuilt from ``spec``. An
    existing overlay is replaced: never call this on the host the server runs on.

    Raises:
        ImageError: the base image is missing or unreadable, or qemu-img fails.
        MigrationError: ``virtual_size`` is not positive.
        OSError: files cannot be written.
    """
    if virtual_size <= 0:
        raise MigrationError(f"virtual size must be positive, not {virtual_size}")
    paths.create()
    if not paths.console_log.exists():
        paths.console_log.touch()
    host_files.share_file(paths.console_log)
    create_overlay_bytes(spec.image_path, spec.image_format, paths.disk, virtual_size)
    if seed_iso is None:
        write_seed(spec, paths.seed, network_config)
        return
    tmp = paths.seed.with_name(paths.seed.name + ".tmp")
    with open(tmp, "wb") as out:
        out.write(seed_iso)
        out.flush()
        os.fsync(out.fileno())
    host_files.share_file(tmp)  # 0640: user_data may hold secrets
    tmp.replace(paths.seed)


def disk_virtual_size(hv: Hypervisor, server_id: str, target: str = "vda") -> int:
    """Virtual size in bytes of a server's disk ``target`` as its running domain sees it.

    Raises:
        DomainNotFound: no managed domain for ``server_id``.
        HypervisorError: libvirt fails.
    """
    try:
        capacity, _allocation, _physical = hv.domain(server_id).blockInfo(target)
    except libvirt.libvirtError as exc:
        raise HypervisorError(f"block info {server_id} {target}: {exc}") from exc
    return int(capacity)


# -- live migration --------------------------------------------------------------------------


def _stat_int(stats: Mapping[str, Any], key: str) -> int:
    value = stats.get(key, 0)
    return int(value) if isinstance(value, int | float) else 0


def _progress(stats: Mapping[str, Any]) -> MigrationProgress:
    return MigrationProgress(data_total=_stat_int(stats, "data_total"),
                             data_processed=_stat_int(stats, "data_processed"),
                             data_remaining=_stat_int(stats, "data_remaining"),
                             elapsed_ms=_stat_int(stats, "time_elapsed"))


def _completed_stats(dest_libvirt_uri: str, server_id: str) -> Mapping[str, Any] | None:
    """The destination's completed-job stats of the incoming domain, or None if unreadable."""
    try:
        conn = libvirt.openReadOnly(dest_libvirt_uri)
    except libvirt.libvirtError:
        return None
    try:
        dom = conn.lookupByUUIDString(server_id)
        stats: Mapping[str, Any] = dom.jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
        return stats
    except libvirt.libvirtError:
        return None
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()


def _source_state(dom: Any) -> str:
    """The domain's state on the source after a failed migration; resumes a guest libvirt
    left paused by the migration (its switch-over had begun)."""
    try:
        state, reason = dom.state()
    except libvirt.libvirtError as exc:
        return "absent" if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN else "error"
    if state == libvirt.VIR_DOMAIN_PAUSED and reason in (
            libvirt.VIR_DOMAIN_PAUSED_MIGRATION, libvirt.VIR_DOMAIN_PAUSED_POSTCOPY_FAILED):
        with contextlib.suppress(libvirt.libvirtError):
            dom.resume()
            state, _ = dom.state()
    if state in (libvirt.VIR_DOMAIN_RUNNING, libvirt.VIR_DOMAIN_BLOCKED):
        return "running"
    if state == libvirt.VIR_DOMAIN_PAUSED:
        return "paused"
    if state == libvirt.VIR_DOMAIN_SHUTOFF:
        return "shutoff"
    return "error"


def live_migrate(hv: Hypervisor, server_id: str, *, dest_libvirt_uri: str, migrate_uri: str,
                 dest_xml: str, persist_xml: str, max_downtime_ms: int, timeout_s: float,
                 on_progress: Callable[[MigrationProgress], None] | None = None,
                 abort: threading.Event | None = None) -> MigrationStats:
    """Live-migrate a running server from ``hv``'s host to another host, disks included.

    ``dest_libvirt_uri`` is the destination libvirtd as the source libvirtd reaches it
    (peer-to-peer); ``migrate_uri`` (``tcp://<addr>``) is where QEMU sends memory and the NBD
    disk mirror (the destination picks a port from its migration port range). ``dest_xml`` and
    ``persist_xml`` are the running and persistent definitions with the destination's paths
    (``migratable_xml`` + ``rewrite_paths``); the destination's files must exist
    (``prepare_incoming``). The guest pauses at most about ``max_downtime_ms`` for the
    switch-over. While the job runs, ``on_progress`` gets a reading every
    ``POLL_INTERVAL_S`` (called in this thread; an exception it raises aborts the migration).
    Setting ``abort``, or running longer than ``timeout_s``, aborts the job.

    On success the domain runs and is defined on the destination and is gone from the
    source. A migration that completes before an abort takes effect counts as a success.

    Raises:
        MigrationFailed: libvirt refused or failed the migration, it timed out or was aborted;
            the guest runs on the source (``source_state`` says what was observed; see
            ``MigrationFailed.settled`` for a job that did not end after its abort).
        DomainNotFound: no managed domain for ``server_id`` on the source.
        SpecError: ``server_id`` is not a canonical UUID.
        MigrationError: ``dest_xml`` is not a definition of this server.
    """
    sid = canonical_uuid(server_id, "server_id")
    for xml in (dest_xml, persist_xml):
        meta = parse_metadata(xml)
        if meta is None or meta.server_id != sid:
            raise MigrationError(f"destination XML does not define server {sid}")
    dom = hv.domain(sid)
    conn = hv.connection
    try:
        disks = writable_disk_targets(str(dom.XMLDesc(0)))
        dom.migrateSetMaxDowntime(max_downtime_ms, 0)
    except libvirt.libvirtError as exc:
        raise MigrationFailed(f"cannot prepare migration of {sid}: {exc}",
                              source_state=_source_state(dom)) from exc
    params: dict[str, Any] = {
        libvirt.VIR_MIGRATE_PARAM_URI: migrate_uri,
        libvirt.VIR_MIGRATE_PARAM_DEST_XML: dest_xml,
        libvirt.VIR_MIGRATE_PARAM_PERSIST_XML: persist_xml,
        libvirt.VIR_MIGRATE_PARAM_MIGRATE_DISKS: disks,
    }
    outcome: list[BaseException | None] = []

    def run() -> None:
        try:
            dom.migrateToURI3(dest_libvirt_uri, params, LIVE_FLAGS)
            outcome.append(None)
        except BaseException as exc:  # handed to the waiting thread
            outcome.append(exc)

    started = time.monotonic()
    worker = threading.Thread(target=run, name=f"migrate-{sid}", daemon=True)
    worker.start()
    aborted = timed_out = False
    callback_error: BaseException | None = None
    while worker.is_alive():
        worker.join(POLL_INTERVAL_S)
        if not worker.is_alive():
            break
        if not (aborted or timed_out):
            if abort is not None and abort.is_set():
                aborted = True
            elif time.monotonic() - started > timeout_s:
                timed_out = True
            elif on_progress is not None:
                try:
                    stats = dom.jobStats(0)
                    if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) != \
                            libvirt.VIR_DOMAIN_JOB_NONE:
                        on_progress(_progress(stats))
                except libvirt.libvirtError:
                    pass  # the job is between phases or just ended; read again next time
                except Exception as exc:
                    callback_error = exc
                    aborted = True
            if aborted or timed_out:
                _abort(dom, worker)
                break
    wall_ms = int((time.monotonic() - started) * 1000)
    settled = bool(outcome)
    error = outcome[0] if settled else MigrationError(
        f"migration did not end within {ABORT_GRACE_S:g} s of its abort")
    if error is None:
        completed = _completed_stats(dest_libvirt_uri, sid)
        if completed is None:
            return MigrationStats(elapsed_ms=wall_ms, downtime_ms=None, data_processed=0)
        downtime = completed.get("downtime")
        return MigrationStats(
            elapsed_ms=_stat_int(completed, "time_elapsed") or wall_ms,
            downtime_ms=int(downtime) if isinstance(downtime, int) else None,
            data_processed=_stat_int(completed, "data_processed"))
    # libvirt's own connection to the source may still hold the domain; look it up afresh.
    try:
        after = conn.lookupByUUIDString(sid)
    except libvirt.libvirtError:
        after = dom
    state = _source_state(after)
    if timed_out:
        message = f"live migration of {sid} timed out after {timeout_s:g} s"
    elif callback_error is not None:
        message = f"live migration of {sid} aborted: progress callback failed: {callback_error}"
    elif aborted:
        message = f"live migration of {sid} aborted"
    else:
        message = f"live migration of {sid} failed: {error}"
    raise MigrationFailed(message, source_state=state, aborted=aborted,
                          timed_out=timed_out, settled=settled) from error


def _abort(dom: libvirt.virDomain, worker: threading.Thread) -> None:
    """Abort the migration job ``worker`` runs and wait (at most ``ABORT_GRACE_S``) for it to
    end. The abort is asked again every second: libvirt refuses it in some phases of the job
    (while it sets the destination up, say), and one refused abort must not leave the copy
    running for the whole grace."""
    deadline = time.monotonic() + ABORT_GRACE_S
    while worker.is_alive() and time.monotonic() < deadline:
        with contextlib.suppress(libvirt.libvirtError):  # refused now, or already ending
            dom.abortJob()
        worker.join(min(ABORT_RETRY_S, max(0.0, deadline - time.monotonic())))


def active_migration(hv: Hypervisor, server_id: str) -> MigrationProgress | None:
    """Progress of the outgoing migration libvirt is running for ``server_id`` on this host,
    or None when there is none.

    A peer-to-peer migration is driven by the source libvirtd: it goes on (and usually
    completes) when the agent that started it dies. An agent that starts again finds such a
    job here and can wait for it to end or abort it (``abort_migration``).

    Raises:
        DomainNotFound: no managed domain for ``server_id`` (e.g. it has just left).
        HypervisorError: libvirt fails.
    """
    try:
        stats = hv.domain(server_id).jobStats(0)
    except libvirt.libvirtError as exc:
        raise HypervisorError(f"job stats of {server_id}: {exc}") from exc
    if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
        return None
    operation = stats.get("operation")
    if operation is not None and operation != libvirt.VIR_DOMAIN_JOB_OPERATION_MIGRATION_OUT:
        return None
    return _progress(stats)


def runs_at(libvirt_uri: str, server_id: str) -> bool:
    """Whether ``server_id``'s domain is active (running, or paused for a switch-over) on the
    libvirtd at ``libvirt_uri``: where a live migration left the guest when its source's
    agent was not there to see it end.

    Raises:
        MigrationError: that libvirtd cannot be asked.
    """
    try:
        conn = libvirt.openReadOnly(libvirt_uri)
    except libvirt.libvirtError as exc:
        raise MigrationError(f"cannot reach {libvirt_uri}: {exc}") from exc
    try:
        dom = conn.lookupByUUIDString(canonical_uuid(server_id, "server_id"))
        return bool(dom.isActive())
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return False
        raise MigrationError(f"cannot look up {server_id} at {libvirt_uri}: {exc}") from exc
    finally:
        with contextlib.suppress(libvirt.libvirtError):
            conn.close()


def abort_migration(hv: Hypervisor, server_id: str) -> bool:
    """Abort the outgoing migration of ``server_id`` on this host, whoever started it; False
    when none was running. libvirt then resumes the guest here (if the switch-over had not
    completed: check where it runs afterwards).

    Raises:
        DomainNotFound: no managed domain for ``server_id``.
        HypervisorError: libvirt fails.
    """
    if active_migration(hv, server_id) is None:
        return False
    try:
        hv.domain(server_id).abortJob()
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_OPERATION_INVALID:
            return False  # the job ended meanwhile
        raise HypervisorError(f"abort migration of {server_id}: {exc}") from exc
    return True


def completed_migration_stats(hv: Hypervisor, server_id: str) -> MigrationStats | None:
    """On the destination: the stats of the live migration that just brought ``server_id``
    here, or None when libvirt has none (reading them clears them).

    Raises:
        DomainNotFound: no managed domain for ``server_id``.
    """
    try:
        stats = hv.domain(server_id).jobStats(libvirt.VIR_DOMAIN_JOB_STATS_COMPLETED)
    except libvirt.libvirtError:
        return None
    if stats.get("type", libvirt.VIR_DOMAIN_JOB_NONE) == libvirt.VIR_DOMAIN_JOB_NONE:
        return None
    downtime = stats.get("downtime")
    return MigrationStats(elapsed_ms=_stat_int(stats, "time_elapsed"),
                          downtime_ms=int(downtime) if isinstance(downtime, int) else None,
                          data_processed=_stat_int(stats, "data_processed"))


# -- cold moves (shut-off domains) -----------------------------------------------------------


def export_definition(hv: Hypervisor, server_id: str, path_map: Mapping[str, str]) -> str:
    """The persistent definition of a server's domain with paths rewritten for another host.

    Raises:
        DomainNotFound: no managed domain for ``server_id``.
        HypervisorError: libvirt fails.
        MigrationError: a prefix of ``path_map`` is not absolute.
    """
    _live, persistent = migratable_xml(hv, server_id)
    return rewrite_paths(persistent, path_map)


def import_definition(hv: Hypervisor, domain_xml: str) -> str:
    """Define a server's domain (shut off) from ``domain_xml``; return the server id.

    Idempotent: defining the same server again replaces its definition. Refuses XML that is
    not a minicloud definition and never replaces a foreign domain of the same UUID.

    Raises:
        MigrationError: ``domain_xml`` carries no minicloud metadata.
        HypervisorError: libvirt rejects the definition, or a foreign domain has the UUID.
    """
    meta = parse_metadata(domain_xml)
    if meta is None:
        raise MigrationError("not a minicloud domain definition")
    try:
        hv.domain(meta.server_id)
    except ForeignDomain as exc:
        raise HypervisorError(
            f"a foreign domain already uses UUID {meta.server_id}; not touching it") from exc
    except DomainNotFound:
        pass
    try:
        hv.connection.defineXML(domain_xml)
    except libvirt.libvirtError as exc:
        raise HypervisorError(f"define {meta.server_id}: {exc}") from exc
    return meta.server_id


def forget_definition(hv: Hypervisor, server_id: str) -> bool:
    """Undefine a shut-off server's domain, keeping its files; False when there was none.

    Raises:
        DomainRunning: the domain is running (a cold move needs it shut off).
        HypervisorError: libvirt fails.
    """
    try:
        dom = hv.domain(server_id)
    except DomainNotFound:
        return False
    try:
        if dom.isActive():
            raise DomainRunning(f"{server_id} must be shut off to leave this host")
        try:
            dom.undefineFlags(libvirt.VIR_DOMAIN_UNDEFINE_MANAGED_SAVE
                              | libvirt.VIR_DOMAIN_UNDEFINE_SNAPSHOTS_METADATA
                              | libvirt.VIR_DOMAIN_UNDEFINE_NVRAM)
        except libvirt.libvirtError as exc:
            if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
                return False
            dom.undefine()  # drivers without these flags (libvirt's test driver)
    except libvirt.libvirtError as exc:
        if exc.get_error_code() == libvirt.VIR_ERR_NO_DOMAIN:
            return False
        raise HypervisorError(f"undefine {server_id}: {exc}") from exc
    return True

