"""Metering: the append-only usage ledger, its derived pieces, rate cards and closed periods.

``usage_ledger`` is the record of truth and is only ever INSERTed into. ``usage_pieces`` and
``usage_servers`` are derived from it at insert time (for fast reports) and can be rebuilt from
the ledger at any moment (``api.usage.ledger.rebuild``). No foreign key points from the ledger to
servers or projects: billing history outlives them.
"""

from __future__ import annotations

from datetime import datetime
from typing import Any

from sqlalchemy import JSON, BigInteger, Boolean, Index, Integer, String, Text
from sqlalchemy.orm import Mapped, mapped_column

from api.db import Base, UTCDateTime, new_id, utcnow

# SQLite only auto-increments an INTEGER PRIMARY KEY; PostgreSQL gets a BIGINT identity.
_SEQ = BigInteger().with_variant(Integer(), "sqlite")


class LedgerEntry(Base):
    """One billable change of one server (or an admin adjustment); never updated or deleted."""

    __tablename__ = "usage_ledger"
    __table_args__ = (
        Index("ix_usage_ledger_server_at", "server_id", "at_s"),
        Index("ix_usage_ledger_project_kind_at", "project_id", "kind", "at_s"),
    )
    seq: Mapped[int] = mapped_column(_SEQ, primary_key=True, autoincrement=True)
    idempotency_key: Mapped[str] = mapped_column(String(255), unique=True)
    kind: Mapped[str] = mapped_column(String(16))
    project_id: Mapped[str] = mapped_column(String(36))
    server_id: Mapped[str | None] = mapped_column(String(36))
    flavor_id: Mapped[str | None] = mapped_column(String(36))
    vcpus: Mapped[int] = mapped_column(Integer)
    ram_mb: Mapped[int] = mapped_column(Integer)
    disk_gb: Mapped[int] = mapped_column(Integer)
    # The billing time after clamping; at_s is the same instant in whole epoch seconds.
    at: Mapped[datetime] = mapped_column(UTCDateTime())
    at_s: Mapped[int] = mapped_column(BigInteger)
    # What the reporter said, kept when the time had to be clamped.
    reported_at: Mapped[datetime | None] = mapped_column(UTCDateTime())
    clamped: Mapped[bool] = mapped_column(Boolean, default=False)
    source: Mapped[str] = mapped_column(String(8))
    reason: Mapped[str | None] = mapped_column(String(1024))
    admin_id: Mapped[str | None] = mapped_column(String(36))
    # Adjustments only: a signed amount of money as decimal text (exact on every backend).
    amount: Mapped[str | None] = mapped_column(String(64))
    recorded_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class UsagePiece(Base):
    """A derived billable stretch of one server (see ``api.usage.rules.Piece``)."""

    __tablename__ = "usage_pieces"
    __table_args__ = (
        Index("ix_usage_pieces_bucket_project", "bucket", "project_id"),
        Index("ix_usage_pieces_server", "server_id"),
    )
    id: Mapped[int] = mapped_column(_SEQ, primary_key=True, autoincrement=True)
    project_id: Mapped[str] = mapped_column(String(36))
    server_id: Mapped[str] = mapped_column(String(36))
    flavor_id: Mapped[str | None] = mapped_column(String(36))
    resource: Mapped[str] = mapped_column(String(8))
    bucket: Mapped[int] = mapped_column(Integer)
    start_s: Mapped[int] = mapped_column(BigInteger)
    end_s: Mapped[int | None] = mapped_column(BigInteger)
    run_start_s: Mapped[int | None] = mapped_column(BigInteger)
    run_end_s: Mapped[int | None] = mapped_column(BigInteger)
    vcpus: Mapped[int] = mapped_column(Integer)
    ram_mb: Mapped[int] = mapped_column(Integer)
    disk_gb: Mapped[int] = mapped_column(Integer)


class UsageServer(Base):
    """Derived per-server summary: project, first and last seen, billing state."""

    __tablename__ = "usage_servers"
    server_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    project_id: Mapped[str] = mapped_column(String(36), index=True)
    first_s: Mapped[int] = mapped_column(BigInteger)
    last_s: Mapped[int] = mapped_column(BigInteger)
    state: Mapped[str] = mapped_column(String(16))


class RateCard(Base):
    """Prices in force from ``valid_from`` until the next card's; never edited once in force."""

    __tablename__ = "rate_cards"
    id: Mapped[str] = mapped_column(String(36), primary_key=True, default=new_id)
    valid_from: Mapped[datetime] = mapped_column(UTCDateTime(), unique=True)
    currency: Mapped[str] = mapped_column(String(3))
    # Meter price key (``api.usage.meters``) -> hourly price as decimal text (exact on SQLite
    # too, whose NUMERIC is a float).
    prices: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    flavor_hour: Mapped[dict[str, Any]] = mapped_column(JSON, default=dict)
    created_by: Mapped[str | None] = mapped_column(String(36))
    created_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class ClosedPeriod(Base):
    """A closed UTC month: its reports are frozen in ``period_reports``."""

    __tablename__ = "closed_periods"
    period: Mapped[str] = mapped_column(String(7), primary_key=True)  # YYYY-MM
    start_s: Mapped[int] = mapped_column(BigInteger)
    end_s: Mapped[int] = mapped_column(BigInteger)
    closed_by: Mapped[str | None] = mapped_column(String(36))
    closed_at: Mapped[datetime] = mapped_column(UTCDateTime(), default=utcnow)


class PeriodReport(Base):
    """A frozen report of a closed month, byte for byte; ``scope`` is a project id or ``all``."""

    __tablename__ = "period_reports"
    period: Mapped[str] = mapped_column(String(7), primary_key=True)
    scope: Mapped[str] = mapped_column(String(36), primary_key=True)
    report_json: Mapped[str] = mapped_column(Text)
    report_csv: Mapped[str] = mapped_column(Text)
