"""Compute hosts, their inventories, and the allocations servers hold on them."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, Float, ForeignKey, Index, Integer, String, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from api.db import Base, UTCDateTime, new_id, utcnow
from scheduler.resources import NAMES

# The resource classes an inventory or allocation row may name (``scheduler.resources``).
RESOURCE_CLASSES = NAMES


class Host(Base):
    """A compute node running one agent."""

    __tablename__ = "hosts"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    name: Mapped[str] = mapped_column(String(255), unique=True)
    availability_zone: Mapped[str] = mapped_column(String(64), default="nova", index=True)
    libvirt_uri: Mapped[str] = mapped_column(String(255), default="")
    virt_type: Mapped[str] = mapped_column(String(16), default="qemu")
    architecture: Mapped[str] = mapped_column(String(32), default="x86_64")
    enabled: Mapped[bool] = mapped_column(default=True)
    disabled_reason: Mapped[str | None] = mapped_column(String(255), nullable=True)
    # Aggregate tags (key -> value) that flavors' extra_specs can require.
    aggregates: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    last_heartbeat_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # [{server_id, host_id}]: other hosts' domains its agent quarantined (last heartbeat).
    foreign_domains: Mapped[list[Any] | None] = mapped_column(JSON, nullable=True)
    credential_digest: Mapped[str | None] = mapped_column(String(64), nullable=True, unique=True)
    # Bumped by every claim on this host: concurrent claims conflict instead of overcommitting.
    generation: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # Bumped by whoever changes the desired state of a server on this host
    # (``api.agent.service.notify_host``): the agent's long-poll cursor.
    desired_generation: Mapped[int] = mapped_column(Integer, default=0, server_default="0")
    # The agent's reconcile-loop progress as its last heartbeat reported it ({passes,
    # pass_started_at, last_pass_at, failing_count, failing}), and when (API clock) its
    # pass count last moved: a host heartbeating without progress is degraded.
    loop_progress: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    loop_progress_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # The last heartbeat the host monitor published ``host_down`` for: one publication per
    # silence, however many sweeps see the host down.
    down_published_for: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # None, or "draining" (no new placements; its servers are being moved off) or "drained"
    # (api.mobility.drain).
    maintenance: Mapped[str | None] = mapped_column(String(16), nullable=True)
    # How other hosts' libvirtd reach this host as a live-migration destination, as its agent
    # registered it with its inventory ({libvirt_uri, migrate_uri, port_min, port_max,
    # instances_dir, image_cache_dir}); None: the host takes no live migrations.
    migration_endpoint: Mapped[dict[str, Any] | None] = mapped_column(JSON(none_as_null=True),
                                                                      nullable=True)


class Inventory(Base):
    """How much of one resource class a host offers."""

    __tablename__ = "inventories"
    __table_args__ = (UniqueConstraint("host_id", "resource_class"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"))
    resource_class: Mapped[str] = mapped_column(String(32))
    total: Mapped[int] = mapped_column(Integer)
    reserved: Mapped[int] = mapped_column(Integer, default=0)
    # None: use the pool-wide ratio from settings.
    allocation_ratio: Mapped[float | None] = mapped_column(Float, nullable=True)
    min_unit: Mapped[int] = mapped_column(Integer, default=1)
    max_unit: Mapped[int | None] = mapped_column(Integer, nullable=True)


class Allocation(Base):
    """What one server consumes of one resource class on one host."""

    __tablename__ = "allocations"
    # One row per class per host: a migrating server holds rows on its source host (owned by
    # its migration record) and on its destination at once.
    __table_args__ = (UniqueConstraint("server_id", "host_id", "resource_class"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    server_id: Mapped[str] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"))
    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.id"), index=True)
    resource_class: Mapped[str] = mapped_column(String(32))
    used: Mapped[int] = mapped_column(Integer)


class EnrollmentToken(Base):
    """A single-use, expiring secret an operator gives to a new compute node."""

    __tablename__ = "enrollment_tokens"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    digest: Mapped[str] = mapped_column(String(64), unique=True)
    created_by: Mapped[str] = mapped_column(String(36))
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    used_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    host_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class AgentObservation(Base):
    """One observation an agent reported and the API applied (keyed for idempotent retries)."""

    __tablename__ = "agent_observations"
    __table_args__ = (
        UniqueConstraint("host_id", "idempotency_key"),
        Index("ix_agent_observations_server_seen", "server_id", "seen_at"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"))
    idempotency_key: Mapped[str] = mapped_column(String(128))
    server_id: Mapped[str] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"))
    state: Mapped[str] = mapped_column(String(16))
    seen_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # The status change it caused ("ACTIVE->SHUTOFF"), or "" when it changed no status.
    transition: Mapped[str] = mapped_column(String(40), default="")
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
