"""What can be rented: flavors and images."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from api.db import Base, UTCDateTime, new_id, utcnow


class Flavor(Base):
    """A size of server: vCPUs, RAM and root disk."""

    __tablename__ = "flavors"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(64), unique=True)
    vcpus: Mapped[int] = mapped_column(Integer)
    ram_mb: Mapped[int] = mapped_column(Integer)
    disk_gb: Mapped[int] = mapped_column(Integer)
    is_public: Mapped[bool] = mapped_column(default=True)
    # Host aggregate requirements, e.g. {"ssd": "true"}: the scheduler only picks hosts whose
    # aggregate tags carry every pair.
    extra_specs: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Set when a flavor that (soft-deleted) servers still reference is deleted: the row stays
    # for their history and usage, hidden from every listing, its name freed.
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class FlavorAccess(Base):
    """A non-public flavor shared with one project."""

    __tablename__ = "flavor_access"
    __table_args__ = (UniqueConstraint("flavor_id", "project_id"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    flavor_id: Mapped[str] = mapped_column(ForeignKey("flavors.id", ondelete="CASCADE"))
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )


class Image(Base):
    """A bootable disk image (qcow2/raw) or a kernel/ramdisk for direct boot."""

    __tablename__ = "images"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(255))
    # queued (no bytes yet) -> saving (upload running) -> active; killed on a failed upload.
    status: Mapped[str] = mapped_column(String(16), default="queued")
    disk_format: Mapped[str] = mapped_column(String(16))
    visibility: Mapped[str] = mapped_column(String(16), default="private")
    size: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    sha256: Mapped[str | None] = mapped_column(String(64), nullable=True)
    min_disk: Mapped[int] = mapped_column(Integer, default=0)
    min_ram: Mapped[int] = mapped_column(Integer, default=0)
    # kernel_id, ramdisk_id, kernel_cmdline, architecture, ...
    properties: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
