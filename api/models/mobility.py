"""Migrations: one record per move of a server from one host to another."""

from __future__ import annotations

from datetime import datetime

from sqlalchemy import BigInteger, ForeignKey, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from api.db import Base, UTCDateTime, new_id, utcnow


class Migration(Base):
    """A cold or live move of one server (``api.mobility``).

    While it is in flight the server holds allocations on both hosts: the rows on
    ``source_host_id`` belong to this record (they are released when it completes), the rows on
    ``dest_host_id`` to the server (they are released when it fails). Host ids are kept as
    plain strings so a decommissioned host's history stays readable.
    """

    __tablename__ = "migrations"
    __table_args__ = (
        Index("ix_migrations_server_created", "server_id", "created_at"),
        Index("ix_migrations_dest_status", "dest_host_id", "status"),
        Index("ix_migrations_source_status", "source_host_id", "status"),
    )
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    server_id: Mapped[str] = mapped_column(ForeignKey("servers.id", ondelete="CASCADE"))
    project_id: Mapped[str] = mapped_column(String(36))
    # cold | live
    kind: Mapped[str] = mapped_column(String(8))
    # queued, preparing, migrating, finishing, completed, failed, aborted, reverted
    # (api.mobility.states)
    status: Mapped[str] = mapped_column(String(16))
    source_host_id: Mapped[str] = mapped_column(String(36))
    dest_host_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    # The status the server had when the move started (ACTIVE or SHUTOFF): where it returns.
    server_status: Mapped[str] = mapped_column(String(16))
    requested_by: Mapped[str | None] = mapped_column(String(36), nullable=True)
    # Set when a host drain started the move.
    drain_host_id: Mapped[str | None] = mapped_column(String(36), nullable=True)
    progress: Mapped[int] = mapped_column(Integer, default=0)
    data_remaining: Mapped[int | None] = mapped_column(BigInteger, nullable=True)
    fault_code: Mapped[str | None] = mapped_column(String(64), nullable=True)
    fault_message: Mapped[str | None] = mapped_column(Text, nullable=True)
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)
    updated_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow, onupdate=utcnow)
    finished_at: Mapped[datetime | None] = mapped_column(UTCDateTime(), nullable=True)
