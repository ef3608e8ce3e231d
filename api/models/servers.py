"""Servers, their events, server groups and quotas."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, ForeignKey, Index, Integer, String, Text, UniqueConstraint
from sqlalchemy.orm import Mapped, mapped_column

from api.db import Base, UTCDateTime, new_id, utcnow
from scheduler.resources import RESOURCE_CLASSES

# What a quota can limit: server count, then each resource class's quota key.
QUOTA_RESOURCES = ("instances", *(rc.quota_key for rc in RESOURCE_CLASSES))
# What a quota can limit of images: how many, and their bytes together.
IMAGE_QUOTA_RESOURCES = ("images", "image_bytes")


class Quota(Base):
    """A project's limit for one resource; absent rows fall back to the configured default."""

    __tablename__ = "quotas"
    __table_args__ = (UniqueConstraint("project_id", "resource"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    resource: Mapped[str] = mapped_column(String(32))
    # Bytes (image_bytes) outgrow 32 bits.
    limit: Mapped[int] = mapped_column(BigInteger)


class ServerGroup(Base):
    """A set of servers placed together or apart."""

    __tablename__ = "server_groups"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True
    )
    name: Mapped[str] = mapped_column(String(255))
    policy: Mapped[str] = mapped_column(String(32))
    # Bumped by every member placement: serializes hard (anti-)affinity claims.
    generation: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Server(Base):
    """A rented VM. The flavor's sizes are copied so later flavor edits never rewrite it."""

    __tablename__ = "servers"
    __table_args__ = (
        Index("ix_servers_project_created", "project_id", "created_at", "id"),
        Index("ix_servers_host_id", "host_id"),
        # The stuck-transition sweep (api.servers.timeouts) reads only stuck servers.
        Index("ix_servers_status_updated", "status", "updated_at"),
        Index("ix_servers_task_state_updated", "task_state", "updated_at"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(ForeignKey("projects.id", ondelete="CASCADE"))
    user_id: Mapped[str] = mapped_column(String(36))
    name: Mapped[str] = mapped_column(String(255))
    flavor_id: Mapped[str] = mapped_column(ForeignKey("flavors.id"))
    vcpus: Mapped[int] = mapped_column(Integer)
    ram_mb: Mapped[int] = mapped_column(Integer)
    disk_gb: Mapped[int] = mapped_column(Integer)
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"))
    # BUILD, ACTIVE, SHUTOFF, REBOOT, DELETING, ERROR, DELETED (soft-deleted, hidden).
    status: Mapped[str] = mapped_column(String(16), default="BUILD")
    # The transition in flight (scheduling, spawning, powering-off, ...), or None.
    task_state: Mapped[str | None] = mapped_column(String(32), nullable=True)
    # What the hypervisor last reported: running, shutoff, ... (None until seen).
    power_state: Mapped[str | None] = mapped_column(String(16), nullable=True)
    host_id: Mapped[str | None] = mapped_column(ForeignKey("hosts.id"), nullable=True)
    availability_zone: Mapped[str | None] = mapped_column(String(64), nullable=True)
    server_group_id: Mapped[str | None] = mapped_column(
        ForeignKey("server_groups.id"), nullable=True, index=True
    )
    user_data: Mapped[str | None] = mapped_column(Text, nullable=True)
    key_data: Mapped[str | None] = mapped_column(Text, nullable=True)
    addresses: Mapped[list[Any]] = mapped_column(JSON, default=list)
    fault_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    fault_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    # Bumped on every change of desired state: agents long-poll on it.
    generation: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    deleted_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)


class ServerEvent(Base):
    """One request or state change of a server: who, when, what, and how it ended."""

    __tablename__ = "server_events"
    __table_args__ = (Index("ix_server_events_server_created", "server_id", "created_at"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    server_id: Mapped[str] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"))
    project_id: Mapped[str] = mapped_column(String(36))
    action: Mapped[str] = mapped_column(String(32))
    user_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    request_id: Mapped[str | None] = mapped_column(String(64), nullable=True)
    result: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
