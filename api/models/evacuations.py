"""Evacuations: servers rebuilt elsewhere because their host went down, and their fencing."""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, ForeignKey, Index, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from api.db import Base, UTCDateTime, new_id, utcnow


class Evacuation(Base):
    """One server of a down host in one evacuation request (``batch_id``).

    ``result``: ``rebuilding`` (placed on ``target_host_id`` and rebuilt there from its
    image), ``refused`` (no host could take it: it stays on the down host, ``message`` says
    why) or ``deleted`` (it was being deleted: the delete finished). A ``rebuilding`` row is
    a fence order for the down host until its agent confirms (``fenced_at``) that it destroyed
    and undefined its old copy.
    """

    __tablename__ = "evacuations"
    __table_args__ = (
        # The agent gate (``fencing pending?``) and the host's progress read by host.
        Index("ix_evacuations_host_fenced", "host_id", "fenced_at"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    batch_id: Mapped[str] = mapped_column(String(36), index=True)
    host_id: Mapped[str] = mapped_column(ForeignKey("hosts.id", ondelete="CASCADE"))
    server_id: Mapped[str] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"),
                                           index=True)
    target_host_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    result: Mapped[str] = mapped_column(String(16))
    message: Mapped[str] = mapped_column(Text, default="")
    details: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    # None: an automatic evacuation (the host monitor).
    requested_by: Mapped[str | None] = mapped_column(String(36), nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    fenced_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
