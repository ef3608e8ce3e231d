"""Guest metrics: each server's last reported counters, and rollups of the derived rates.

No foreign key points at servers: a deleted server's rows simply age out under retention,
and the hot ingestion path never has to check a parent row it has just read.
"""

from __future__ import annotations

from sqlalchemy import BigInteger, Float, Index, Integer, String
from sqlalchemy.orm import Mapped, mapped_column

from api.db import Base


class GuestMetricCounters(Base):
    """The counters of a server's last sample: the baseline its next rates are derived from."""

    __tablename__ = "guest_metric_counters"
    __table_args__ = (Index("ix_guest_metric_counters_at_ms", "at_ms"),)
    server_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    # When the agent read them, in epoch milliseconds (rates divide by the difference).
    at_ms: Mapped[int] = mapped_column(BigInteger)
    cpu_time_ns: Mapped[int] = mapped_column(BigInteger)
    disk_read_bytes: Mapped[int] = mapped_column(BigInteger)
    disk_write_bytes: Mapped[int] = mapped_column(BigInteger)
    net_rx_bytes: Mapped[int] = mapped_column(BigInteger)
    net_tx_bytes: Mapped[int] = mapped_column(BigInteger)


class GuestMetricRollup(Base):
    """Sums of one server's derived samples in one bucket of one rollup level.

    ``step`` is the level's bucket width in seconds (10, 60, 3600 by default) and ``bucket``
    the bucket's start in epoch seconds; a metric's average over the bucket is
    ``<metric>_sum / samples``. Summing sums and counts makes every level exact and lets one
    upsert add a sample to all levels at once.
    """

    __tablename__ = "guest_metric_rollups"
    # Retention deletes by (step, bucket); the primary key serves per-server reads.
    __table_args__ = (Index("ix_guest_metric_rollups_step_bucket", "step", "bucket"),)
    server_id: Mapped[str] = mapped_column(String(36), primary_key=True)
    step: Mapped[int] = mapped_column(Integer, primary_key=True)
    bucket: Mapped[int] = mapped_column(BigInteger, primary_key=True)
    samples: Mapped[int] = mapped_column(Integer)
    cpu_util_sum: Mapped[float] = mapped_column(Float)
    memory_used_mb_sum: Mapped[float] = mapped_column(Float)
    disk_read_bps_sum: Mapped[float] = mapped_column(Float)
    disk_write_bps_sum: Mapped[float] = mapped_column(Float)
    net_rx_bps_sum: Mapped[float] = mapped_column(Float)
    net_tx_bps_sum: Mapped[float] = mapped_column(Float)
