"""Scaling groups, their members and activities, and the reconciler's leader lease."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import (
    JSON,
    Boolean,
    ForeignKey,
    Index,
    Integer,
    String,
    Text,
    UniqueConstraint,
)
from sqlalchemy.orm import Mapped, mapped_column

from api.db import Base, UTCDateTime, new_id, utcnow


class ScalingGroup(Base):
    """A set of servers of one project kept at ``desired`` by the reconciler."""

    __tablename__ = "scaling_groups"
    __table_args__ = (UniqueConstraint("project_id", "name"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    project_id: Mapped[str] = mapped_column(
        ForeignKey("projects.id", ondelete="CASCADE"), index=True)
    # The user whose name the reconciler creates members in (quota and events as usual).
    user_id: Mapped[str] = mapped_column(String(36))
    name: Mapped[str] = mapped_column(String(63))
    # active, or deleting (members going away; the row goes once they are gone).
    status: Mapped[str] = mapped_column(String(16), default="active")
    # The launch template.
    flavor_id: Mapped[str] = mapped_column(ForeignKey("flavors.id"))
    image_id: Mapped[str] = mapped_column(ForeignKey("images.id"))
    user_data: Mapped[str | None] = mapped_column(Text, nullable=True)
    key_data: Mapped[str | None] = mapped_column(Text, nullable=True)
    availability_zone: Mapped[str | None] = mapped_column(String(64), nullable=True)
    server_group_id: Mapped[str | None] = mapped_column(
        ForeignKey("server_groups.id"), nullable=True)
    min_size: Mapped[int] = mapped_column(Integer)
    max_size: Mapped[int] = mapped_column(Integer)
    desired: Mapped[int] = mapped_column(Integer)
    scale_in_policy: Mapped[str] = mapped_column(String(16), default="oldest_first")
    # Target tracking policy (api.scaling.schemas.TargetTrackingIn) or None.
    policy: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    scheduled_actions: Mapped[list[Any]] = mapped_column(JSON, default=list)
    # Decision state: [iso time, proposal] pairs of the stabilisation window.
    recommendations: Mapped[list[Any]] = mapped_column(JSON, default=list)
    last_scale_out_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    schedule_checked_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # The sequence number of the next member (its name is <group>-<seq>).
    next_seq: Mapped[int] = mapped_column(Integer, default=1)
    # Failed launches in a row and when the next attempt may run (exponential backoff).
    failures: Mapped[int] = mapped_column(Integer, default=0)
    retry_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    # Optimistic concurrency: every reconciler write is UPDATE ... WHERE generation = :seen.
    generation: Mapped[int] = mapped_column(Integer, default=0)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)


class ScalingMember(Base):
    """One server the group launched, keyed by (group, sequence number): a launch that runs
    twice collides on the unique key instead of creating a second server."""

    __tablename__ = "scaling_members"
    __table_args__ = (UniqueConstraint("group_id", "seq"),
                      Index("ix_scaling_members_group_released", "group_id", "released_at"))
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    group_id: Mapped[str] = mapped_column(ForeignKey("scaling_groups.id", ondelete="CASCADE"))
    seq: Mapped[int] = mapped_column(Integer)
    server_id: Mapped[str] = mapped_column(ForeignKey("servers.id"), unique=True)
    protected: Mapped[bool] = mapped_column(Boolean, default=False)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    # When and why the member left the group (scale_in, replaced, deleted, group_deleted).
    released_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
    release_reason: Mapped[str | None] = mapped_column(String(32), nullable=True)


class ScalingActivity(Base):
    """One decision of the reconciler: why, what it did, and how it ended."""

    __tablename__ = "scaling_activities"
    __table_args__ = (Index("ix_scaling_activities_group_created", "group_id", "created_at"),)
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    group_id: Mapped[str] = mapped_column(ForeignKey("scaling_groups.id", ondelete="CASCADE"))
    project_id: Mapped[str] = mapped_column(String(36))
    # scale_out, scale_in, replace, set (a user's or schedule's change), failure.
    kind: Mapped[str] = mapped_column(String(16))
    # success, partial, error.
    result: Mapped[str] = mapped_column(String(16))
    rule: Mapped[str] = mapped_column(String(32))
    cause: Mapped[str] = mapped_column(Text)
    from_desired: Mapped[int] = mapped_column(Integer)
    to_desired: Mapped[int] = mapped_column(Integer)
    created: Mapped[list[Any]] = mapped_column(JSON, default=list)
    deleted: Mapped[list[Any]] = mapped_column(JSON, default=list)
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # The refusal (a problem document's code and fields) of a failed launch.
    error: Mapped[dict[str, Any] | None] = mapped_column(JSON, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class Lease(Base):
    """A named lease: one holder until ``expires_at``, taken with a compare-and-swap."""

    __tablename__ = "leases"
    name: Mapped[str] = mapped_column(String(64), primary_key=True)
    holder: Mapped[str] = mapped_column(String(128), default="")
    expires_at: Mapped[datetime] = mapped_column(UTCDateTime())
    # Bumped whenever the holder changes (a fencing number for logs and tests).
    term: Mapped[int] = mapped_column(Integer, default=0)
