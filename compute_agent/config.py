"""Agent settings (env prefix ``MINICLOUD_AGENT_``, overridden by command-line flags) and the
host credential kept in the state directory.

The credential file is written with mode 0600 by an atomic rename, so a crash never leaves a
half-written or world-readable secret behind. During a rotation it also holds the next
credential (``pending``), written before the API hears of it, so a crash at any point of the
rotation leaves a file with a credential the API accepts (see ``Agent.rotate_credential``).
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import secrets
import socket
import tempfile
from collections.abc import Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Literal

from pydantic import Field
from pydantic_settings import BaseSettings, SettingsConfigDict

from compute_agent.spec import VirtType

CREDENTIAL_FILE = "credential.json"
log = logging.getLogger("minicloud.agent")


class AgentSettings(BaseSettings):
    """Everything one agent needs to know about its host and its API."""

    model_config = SettingsConfigDict(env_prefix="MINICLOUD_AGENT_", extra="ignore")

    api_url: str = "http://127.0.0.1:8774"
    # PEM CA bundle the API's certificate (https api_url) must chain to; None: system trust.
    ca_bundle: Path | None = None
    name: str = Field(default_factory=socket.gethostname)
    availability_zone: str = "nova"
    state_dir: Path = Path("/var/lib/minicloud-agent")
    instances_dir: Path = Path("/var/lib/minicloud/instances")
    image_cache_dir: Path = Path("/var/lib/minicloud/images")
    # Cached images beyond this many MiB are evicted, least recently used first, never one a
    # server on this host uses; None keeps every image.
    image_cache_max_mb: int | None = Field(default=None, ge=0)
    libvirt_uri: str = "qemu:///system"
    # Live migration to this host (compute_agent.migration.MigrationEndpoint): the address
    # other hosts' libvirtd and QEMU reach this host at; None: this host is no live-migration
    # target. The libvirtd listener is qemu+<transport>://<address>:<port>/system (port None:
    # libvirt's default, 16514 for tls, 16509 for tcp); QEMU's incoming port range is read
    # from migration_port_min/max in qemu_conf.
    migration_address: str | None = None
    migration_transport: Literal["tls", "tcp"] = "tls"
    migration_libvirt_port: int | None = Field(default=None, gt=0, lt=65536)
    qemu_conf: Path = Path("/etc/libvirt/qemu.conf")
    virt_type: Literal["auto", "kvm", "qemu"] = "auto"
    # virt type auto: how long a KVM probe guest has to print its marker before TCG is used.
    kvm_probe_timeout: float = Field(default=5.0, gt=0, le=120)
    # A libvirt network name for the servers' NIC, or "none" for no NIC at all.
    network: str = "default"
    # Explicit disk size in GiB; None: the size of the instances directory's filesystem.
    disk_gb: int | None = Field(default=None, ge=0)
    # Reserved amounts sent with the inventory; None leaves the value an admin set.
    reserved_vcpus: int | None = Field(default=None, ge=0)
    reserved_ram_mb: int | None = Field(default=None, ge=0)
    reserved_disk_gb: int | None = Field(default=None, ge=0)
    heartbeat_interval: float = Field(default=10.0, gt=0)
    # Heartbeats carry only what changed since the last acknowledged one; every this many
    # seconds (and after a failure, at start, or when the API asks) one carries everything.
    full_report_seconds: float = Field(default=600.0, gt=0)
    # How long a guest gets to power off after the ACPI request before it is destroyed.
    shutdown_timeout: float = Field(default=60.0, ge=0)
    # How often the console tail of running servers is shipped (also the long-poll bound).
    console_interval: float = Field(default=2.0, gt=0)
    inventory_interval: float = Field(default=60.0, gt=0)
    # Bound of one long-poll; also how long a stopping agent may take to finish it.
    long_poll_wait: float = Field(default=10.0, ge=0, le=30)
    # Prometheus metrics on 127.0.0.1:metrics_port (compute_agent.metrics); None: off.
    metrics_port: int | None = Field(default=None, gt=0, lt=65536)
    # Seconds between two reports of the running servers' libvirt statistics (guest metrics,
    # one request per host); 0: not reported.
    guest_metrics_interval: float = Field(default=10.0, ge=0)
    # Test-only: a JSON file {server name or id: CPU load %} whose load is added to the
    # servers' CPU time (compute_agent.guest_stats.SimulatedLoad; docs/operations.md).
    simulated_load_file: Path | None = None
    # The agent rotates its host credential once it is this many seconds old; None: never.
    credential_max_age: float | None = Field(default=None, gt=0)

    @property
    def network_name(self) -> str | None:
        """The network for servers' NICs, None for ``none``."""
        return None if self.network.lower() == "none" else self.network


@dataclass(frozen=True)
class Credential:
    """The host identity an enrollment produced.

    ``issued_at``: when ``credential`` was obtained (enrollment or rotation; None: unknown).
    ``pending``: the next credential of a rotation in progress, stored before it is sent.
    """

    api_url: str
    host_id: str
    host_name: str
    credential: str
    issued_at: datetime | None = None
    pending: str | None = None


HOST_CREDENTIAL_PREFIX = "mch_"


def new_host_secret() -> str:
    """A fresh host credential in the API's format (``mch_`` + 43 URL-safe characters)."""
    return HOST_CREDENTIAL_PREFIX + secrets.token_urlsafe(32)


def credential_path(state_dir: Path) -> Path:
    """Where the host credential is kept."""
    return Path(state_dir) / CREDENTIAL_FILE


def load_credential(state_dir: Path) -> Credential | None:
    """The stored credential, or None when the agent has not enrolled yet.

    Raises:
        ValueError: the file exists but is not a credential file.
    """
    path = credential_path(state_dir)
    try:
        data = json.loads(path.read_text())
    except FileNotFoundError:
        return None
    try:
        issued = data.get("issued_at")
        pending = data.get("pending")
        return Credential(
            api_url=str(data["api_url"]), host_id=str(data["host_id"]),
            host_name=str(data["host_name"]), credential=str(data["credential"]),
            # A file without issued_at (older, or written by hand): its age is the file's.
            issued_at=(datetime.fromisoformat(issued) if issued else None if "issued_at" in data
                       else datetime.fromtimestamp(path.stat().st_mtime, UTC)),
            pending=str(pending) if pending else None)
    except (KeyError, TypeError, AttributeError) as exc:
        raise ValueError(f"{path} is not a minicloud credential file") from exc


def save_credential(state_dir: Path, cred: Credential) -> Path:
    """Write the credential atomically with mode 0600 (directory 0700); return its path.

    Raises:
        OSError: the state directory cannot be written.
    """
    state_dir = Path(state_dir)
    state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    path = credential_path(state_dir)
    # mkstemp creates the file 0600 already, so the secret is never readable by others.
    fd, tmp = tempfile.mkstemp(dir=state_dir, prefix=".credential-")
    try:
        with os.fdopen(fd, "w") as f:
            json.dump({"api_url": cred.api_url, "host_id": cred.host_id,
                       "host_name": cred.host_name, "credential": cred.credential,
                       "issued_at": cred.issued_at.isoformat() if cred.issued_at else None,
                       "pending": cred.pending}, f)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o600)
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def kvm_usable() -> bool:
    """True when ``/dev/kvm`` exists and can be opened read-write."""
    try:
        fd = os.open("/dev/kvm", os.O_RDWR | os.O_CLOEXEC)
    except OSError:
        return False
    os.close(fd)
    return True


def resolve_virt_type(setting: str, kvm_probe: Callable[[], tuple[bool, str]]) -> VirtType:
    """The domain type to use: ``auto`` is kvm when /dev/kvm opens and a KVM guest really
    prints (``kvm_probe``, e.g. ``Hypervisor.kvm_probe``: (printed, reason)), else qemu (TCG).

    The choice under ``auto`` and its reason are logged once, here.
    """
    if setting == "kvm":
        return "kvm"
    if setting == "qemu":
        return "qemu"
    if not kvm_usable():
        log.warning("virt type auto: using qemu (TCG): /dev/kvm cannot be opened")
        return "qemu"
    printed, reason = kvm_probe()
    if printed:
        log.info("virt type auto: using kvm (%s)", reason)
        return "kvm"
    log.warning("virt type auto: using qemu (TCG): %s", reason)
    return "qemu"
