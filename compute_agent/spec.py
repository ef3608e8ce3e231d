"""What the agent needs to run one server, and where its files live on the host.

``ServerSpec`` is a frozen, validated value: everything that reaches domain XML, file paths or
commands passes through it. File paths are built only from validated UUIDs (``InstancePaths``),
never from names or user data, so no user string can escape the instances directory.
"""

from __future__ import annotations

import re
import shutil
import uuid
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal

from compute_agent import host_files

VirtType = Literal["kvm", "qemu"]
ImageFormat = Literal["qcow2", "raw"]

VIRT_TYPES: tuple[VirtType, ...] = ("kvm", "qemu")
IMAGE_FORMATS: tuple[ImageFormat, ...] = ("qcow2", "raw")
DOMAIN_PREFIX = "minicloud-"
_HOSTNAME_LABEL = re.compile(r"^[a-z0-9]([a-z0-9-]{0,61}[a-z0-9])?$")


class SpecError(ValueError):
    """A server spec or path value is invalid."""


def canonical_uuid(value: str, what: str = "id") -> str:
    """Return ``value`` as a canonical lowercase UUID string.

    Raises:
        SpecError: ``value`` is not a UUID in canonical 36-character form.
    """
    try:
        parsed = uuid.UUID(value)
    except (ValueError, AttributeError, TypeError) as exc:
        raise SpecError(f"{what} is not a UUID: {value!r}") from exc
    if str(parsed) != value.lower():
        raise SpecError(f"{what} is not a canonical UUID: {value!r}")
    return str(parsed)


def hostname_from_name(name: str, fallback: str = "server") -> str:
    """Derive an RFC 1123 host label (max 63 chars, ``[a-z0-9-]``) from a server name.

    Characters outside the label alphabet become ``-``; an empty result becomes ``fallback``.
    """
    label = re.sub(r"[^a-z0-9-]+", "-", name.lower()).strip("-")[:63].strip("-")
    return label or fallback


def domain_name(server_id: str) -> str:
    """The libvirt domain name of a server: ``minicloud-<uuid>``.

    Raises:
        SpecError: ``server_id`` is not a canonical UUID.
    """
    return DOMAIN_PREFIX + canonical_uuid(server_id, "server_id")


@dataclass(frozen=True)
class ServerSpec:
    """One server as the hypervisor should run it (validated on construction).

    ``image_path``/``image_format`` is the cached base image the overlay is built on;
    ``kernel_path``/``initrd_path``/``kernel_cmdline`` request direct kernel boot.
    ``network`` is a libvirt network name, or None for no NIC.

    Raises:
        SpecError: (on construction) any field is invalid.
    """

    server_id: str
    project_id: str
    name: str
    vcpus: int
    ram_mb: int
    disk_gb: int
    image_path: Path
    image_format: ImageFormat = "qcow2"
    hostname: str = ""
    flavor_id: str = ""
    flavor_name: str = ""
    image_id: str = ""
    kernel_path: Path | None = None
    initrd_path: Path | None = None
    kernel_cmdline: str = ""
    user_data: str | None = None
    ssh_keys: tuple[str, ...] = field(default_factory=tuple)
    network: str | None = None
    virt_type: VirtType = "kvm"
    arch: str = "x86_64"
    # The enrolled host that defines the domain; recorded in its metadata so another host's
    # agent on the same libvirt never mistakes it for a leftover of its own.
    host_id: str = ""

    def __post_init__(self) -> None:
        canonical_uuid(self.server_id, "server_id")
        canonical_uuid(self.project_id, "project_id")
        if self.server_id != self.server_id.lower() or self.project_id != self.project_id.lower():
            raise SpecError("ids must be lowercase UUIDs")
        if not self.hostname:
            object.__setattr__(self, "hostname", hostname_from_name(self.name))
        if not _HOSTNAME_LABEL.match(self.hostname):
            raise SpecError(f"hostname is not an RFC 1123 label: {self.hostname!r}")
        for attr in ("vcpus", "ram_mb"):
            value = getattr(self, attr)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise SpecError(f"{attr} must be a positive integer")
        if not isinstance(self.disk_gb, int) or isinstance(self.disk_gb, bool) or self.disk_gb < 0:
            raise SpecError("disk_gb must be a non-negative integer")
        if self.image_format not in IMAGE_FORMATS:
            raise SpecError(f"image_format must be one of {IMAGE_FORMATS}")
        if self.virt_type not in VIRT_TYPES:
            raise SpecError(f"virt_type must be one of {VIRT_TYPES}")
        if (self.initrd_path is not None or self.kernel_cmdline) and self.kernel_path is None:
            raise SpecError("initrd_path and kernel_cmdline need kernel_path")
        for p in (self.image_path, self.kernel_path, self.initrd_path):
            if p is not None and not Path(p).is_absolute():
                raise SpecError(f"path must be absolute: {p}")
        if self.network is not None and not re.fullmatch(r"[A-Za-z0-9][A-Za-z0-9_.-]{0,63}",
                                                         self.network):
            raise SpecError(f"invalid network name: {self.network!r}")
        if not re.fullmatch(r"[A-Za-z0-9_]{1,32}", self.arch):
            raise SpecError(f"invalid arch: {self.arch!r}")
        if any("\n" in k or "\r" in k for k in self.ssh_keys):
            raise SpecError("an ssh key must be a single line")

    @property
    def domain_name(self) -> str:
        """The libvirt domain name, ``minicloud-<server_id>``."""
        return domain_name(self.server_id)


@dataclass(frozen=True)
class InstancePaths:
    """The files of one server under the host's instances directory.

    Layout: ``<root>/<server_id>/{disk.qcow2, seed.iso, console.log}``. The directory is
    created world-traversable (0711) because QEMU runs as an unprivileged user.

    Raises:
        SpecError: (on construction) ``server_id`` is not a canonical UUID or root not absolute.
    """

    root: Path
    server_id: str

    def __post_init__(self) -> None:
        canonical_uuid(self.server_id, "server_id")
        if self.server_id != self.server_id.lower():
            raise SpecError("server_id must be a lowercase UUID")
        if not Path(self.root).is_absolute():
            raise SpecError("instances root must be an absolute path")

    @property
    def directory(self) -> Path:
        return Path(self.root) / self.server_id

    @property
    def disk(self) -> Path:
        return self.directory / "disk.qcow2"

    @property
    def seed(self) -> Path:
        return self.directory / "seed.iso"

    @property
    def console_log(self) -> Path:
        return self.directory / "console.log"

    def create(self) -> None:
        """Create the instance directory (and root), 0750 with QEMU's group; idempotent."""
        Path(self.root).mkdir(parents=True, exist_ok=True)
        self.directory.mkdir(mode=0o750, exist_ok=True)
        host_files.share_dir(self.directory)

    def remove(self) -> None:
        """Delete the instance directory and everything in it; a missing directory is fine."""
        shutil.rmtree(self.directory, ignore_errors=True)

    def exists(self) -> bool:
        return self.directory.exists()


def instance_ids_on_disk(root: Path) -> list[str]:
    """Server ids that have an instance directory under ``root`` (sorted).

    Only canonical-UUID directory names count, so stray files are ignored. With
    ``Hypervisor.list_managed`` this finds leftovers of an interrupted build or delete.
    """
    root = Path(root)
    if not root.is_dir():
        return []
    ids = []
    for child in root.iterdir():
        try:
            if child.is_dir() and canonical_uuid(child.name) == child.name:
                ids.append(child.name)
        except SpecError:
            continue
    return sorted(ids)
