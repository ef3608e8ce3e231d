"""Agent-facing request and response models."""

from __future__ import annotations

from datetime import datetime
from ipaddress import IPv4Address, IPv6Address
from typing import Annotated, Any, Literal

from pydantic import AwareDatetime, BaseModel, Field, StringConstraints, model_validator

from api.fields import ID_PATTERN, STRICT, TEXT_PATTERN, TOKEN_PATTERN
from api.hosts.schemas import AvailabilityZone, ForeignDomain, LoopProgress, ResourceOut
from api.servers.states import Desired, Observed, OperationKind

HostName = Annotated[
    str,
    StringConstraints(
        min_length=1, max_length=253,
        pattern=r"^[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?"
                r"(\.[A-Za-z0-9]([A-Za-z0-9-]{0,61}[A-Za-z0-9])?)*$",
    ),
]
"""A DNS-style host name: dot-separated labels of letters, digits and inner hyphens."""

LibvirtUri = Annotated[
    str,
    StringConstraints(max_length=255, pattern=r"^[a-z][a-z0-9+]*://[!-~]*$"),
]
"""A libvirt connection URI such as ``qemu:///system`` or ``test:///default`` (no blanks)."""

Architecture = Annotated[str, StringConstraints(pattern=r"^[a-z0-9_]{1,32}$")]
IdempotencyKey = Annotated[str, StringConstraints(min_length=1, max_length=128,
                                                  pattern=TOKEN_PATTERN)]
Secret = Annotated[str, StringConstraints(min_length=1, max_length=256)]
Text = Annotated[str, StringConstraints(max_length=4096, pattern=TEXT_PATTERN)]
MacAddress = Annotated[str, StringConstraints(pattern=r"^[0-9a-fA-F]{2}(:[0-9a-fA-F]{2}){5}$")]


class EnrollIn(BaseModel):
    """A compute node asking to join, authenticated by its enrollment token."""

    model_config = STRICT
    token: Secret
    name: HostName
    availability_zone: AvailabilityZone = "nova"
    libvirt_uri: LibvirtUri
    virt_type: Literal["kvm", "qemu"]
    architecture: Architecture = "x86_64"


class CredentialIn(BaseModel):
    """The new credential an agent chose for itself (``mch_`` + 43 URL-safe characters, as
    the API's own secrets are): sending it again changes nothing, so the agent can store it
    before the request and retry or finish the rotation after a crash."""

    model_config = STRICT
    credential: str = Field(pattern=r"^mch_[A-Za-z0-9_-]{43}$")


class EnrollOut(BaseModel):
    """The host's id and its credential (shown only here)."""

    host_id: str
    credential: str


class InventoryItem(BaseModel):
    """One resource class as the agent sees it; ``reserved`` null keeps the current value."""

    model_config = STRICT
    total: int = Field(ge=0, le=1_000_000_000)
    reserved: int | None = Field(default=None, ge=0, le=1_000_000_000)
    min_unit: int = Field(default=1, ge=1, le=1_000_000_000)
    max_unit: int | None = Field(default=None, ge=1, le=1_000_000_000)

    @model_validator(mode="after")
    def _units(self) -> InventoryItem:
        if self.max_unit is not None and self.max_unit < self.min_unit:
            raise ValueError("max_unit must be >= min_unit")
        if self.reserved is not None and self.reserved > self.total:
            raise ValueError("reserved must be <= total")
        return self


AbsolutePath = Annotated[str, StringConstraints(min_length=1, max_length=1024,
                                                pattern=r"^/[!-~]*$")]
MigrateUri = Annotated[str, StringConstraints(max_length=255, pattern=r"^tcp://[!-~]+$")]


class MigrationEndpointIn(BaseModel):
    """How other hosts reach this host as a live-migration destination: its libvirtd as the
    source's libvirtd connects to it (peer-to-peer), where QEMU's migration stream goes
    (``tcp://<address>``, a port of ``port_min..port_max``), and where this agent keeps
    instances and cached images (the source rewrites the domain's paths to them)."""

    model_config = STRICT
    libvirt_uri: LibvirtUri
    migrate_uri: MigrateUri
    port_min: int = Field(ge=1, le=65535)
    port_max: int = Field(ge=1, le=65535)
    instances_dir: AbsolutePath
    image_cache_dir: AbsolutePath

    @model_validator(mode="after")
    def _range(self) -> MigrationEndpointIn:
        if self.port_min > self.port_max:
            raise ValueError("port_min must be <= port_max")
        return self


class InventoryIn(BaseModel):
    """The host's inventory; absent resource classes stay as they are. ``migration``: the
    host's live-migration endpoint (null: it takes no live migrations; absent: unchanged)."""

    model_config = STRICT
    VCPU: InventoryItem | None = None
    MEMORY_MB: InventoryItem | None = None
    DISK_GB: InventoryItem | None = None
    migration: MigrationEndpointIn | None = None


class InventoryOut(BaseModel):
    """The stored inventory; ``overcommitted`` names classes whose allocations exceed capacity."""

    resources: dict[str, ResourceOut]
    overcommitted: list[str]


class ObservedItem(BaseModel):
    """One server's state as the agent saw it at ``seen_at``."""

    model_config = STRICT
    server_id: str = Field(max_length=36, pattern=ID_PATTERN)
    state: Observed
    seen_at: AwareDatetime


class HeartbeatIn(BaseModel):
    """The agent is alive; ``observed`` carries what it currently sees."""

    model_config = STRICT
    observed: list[ObservedItem] = Field(default_factory=list, max_length=10_000)
    # Domains of other hosts the agent quarantined; None (an older agent) keeps what is known.
    foreign: list[ForeignDomain] | None = Field(default=None, max_length=10_000)
    # The reconcile loop's progress; None (an older agent) never makes the host degraded.
    progress: LoopProgress | None = None
    # False: ``observed`` holds only what changed since the last acknowledged heartbeat. A
    # partial heartbeat of a host that was down is answered ``full_report``.
    full: bool = True


class HeartbeatOut(BaseModel):
    """What the heartbeat did; ``ignored`` lists server ids not on this host."""

    host_id: str
    last_heartbeat_at: datetime
    applied: int
    ignored: list[str]
    heartbeat_interval_seconds: int
    # True: send every observation (and the foreign domains) in the next heartbeat, now.
    full_report: bool = False


class Address(BaseModel):
    """One guest address as libvirt reports it."""

    model_config = STRICT
    ip: IPv4Address | IPv6Address
    mac: MacAddress | None = None
    network: Annotated[str, StringConstraints(max_length=64, pattern=r"^[!-~]*$")] | None = None


class OperationResult(BaseModel):
    """The agent performed the pending operation ``operation_id`` (``DesiredServer.operation``).

    ``success`` is the only result: an operation that fails is retried by the agent on its
    next pass, and the server stays in its transition until it succeeds or is deleted.
    """

    model_config = STRICT
    operation_id: Annotated[str, StringConstraints(max_length=64, pattern=TOKEN_PATTERN)]
    result: Literal["success"]


UnexpectedStop = Literal["unknown", "destroyed", "crashed", "failed", "daemon"]
"""libvirt's reasons for a domain that stopped while it should run, nobody having asked."""


class ObservationIn(BaseModel):
    """A transition the agent saw; the same ``idempotency_key`` is applied at most once."""

    model_config = STRICT
    state: Observed
    seen_at: AwareDatetime
    idempotency_key: IdempotencyKey
    operation: OperationResult | None = None
    message: Text | None = None
    addresses: list[Address] | None = Field(default=None, max_length=64)
    # libvirt's reason for a domain that should run and stopped without being asked; the agent
    # starts it again, so the observation records an event and changes no state.
    unexpected_stop: UnexpectedStop | None = None

    @model_validator(mode="after")
    def _stopped_state(self) -> ObservationIn:
        if self.unexpected_stop is not None and self.state not in ("shutoff", "error"):
            raise ValueError("unexpected_stop goes with state shutoff or error")
        return self


class ObservationOut(BaseModel):
    """The server after the observation; ``applied`` is false for a duplicate or stale one."""

    server_id: str
    status: str
    task_state: str | None
    power_state: str | None
    applied: bool


class FlavorSpec(BaseModel):
    """The sizes a server was created with."""

    vcpus: int
    ram_mb: int
    disk_gb: int


class ImageSpec(BaseModel):
    """What the agent needs to fetch, verify and boot the image."""

    id: str
    sha256: str | None
    disk_format: str
    size: int | None
    kernel_id: str | None = None
    ramdisk_id: str | None = None
    kernel_cmdline: str | None = None


class OperationSpec(BaseModel):
    """A one-shot operation to perform once, then report as ``{operation_id, result}``.

    ``kind`` ``reboot``: ``params.type`` is ``soft`` (ACPI) or ``hard`` (reset); a build or a
    start of the domain is the reboot. ``kind`` ``resize``: redefine the shut-off domain with
    ``flavor``'s vCPUs and memory and grow the overlay to its disk size. ``kind``
    ``live_prepare`` (a live migration's destination): make the incoming guest's empty files
    (base image cached, fresh overlay, seed), define nothing. ``kind`` ``live_migrate`` (its
    source): live-migrate the domain to ``params.dest_libvirt_uri`` / ``params.migrate_uri``
    with paths moved under ``params.dest_instances_dir`` and ``params.dest_image_cache_dir``,
    ``params.max_downtime_ms`` and ``params.timeout_seconds``, reporting progress
    (``POST /v1/agent/servers/{id}/migration-progress``).
    """

    id: str
    kind: OperationKind
    params: dict[str, Any]


class DesiredServer(BaseModel):
    """One server assigned to the host and the state libvirt should be in."""

    server_id: str
    project_id: str
    name: str
    hostname: str
    flavor: FlavorSpec
    image: ImageSpec
    user_data: str | None
    key_data: str | None
    desired: Desired
    operation: OperationSpec | None
    status: str
    task_state: str | None
    generation: int


class DesiredOut(BaseModel):
    """Every server on the host; pass ``cursor`` back as ``since`` to wait for changes."""

    cursor: str
    servers: list[DesiredServer]


class ConsoleOut(BaseModel):
    """The tail of a server's serial console."""

    output: str


class MigrationProgressIn(BaseModel):
    """A live migration's copy as the source's libvirt reports it (bytes, memory and disks)."""

    model_config = STRICT
    data_total: int = Field(ge=0)
    data_processed: int = Field(ge=0)
    data_remaining: int = Field(ge=0)


class MigrationProgressOut(BaseModel):
    """``abort``: an abort was asked for; the agent aborts the copy."""

    migration_id: str
    progress: int
    abort: bool
