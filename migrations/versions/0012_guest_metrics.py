"""guest metrics: last counters per server, and rollups of the derived rates

Revision ID: 0012_guest_metrics
Revises: 0009_stuck
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0012_guest_metrics"
down_revision: str | None = "0009_stuck"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "guest_metric_counters",
        sa.Column("server_id", sa.String(length=36), nullable=False),
        sa.Column("at_ms", sa.BigInteger(), nullable=False),
        sa.Column("cpu_time_ns", sa.BigInteger(), nullable=False),
        sa.Column("disk_read_bytes", sa.BigInteger(), nullable=False),
        sa.Column("disk_write_bytes", sa.BigInteger(), nullable=False),
        sa.Column("net_rx_bytes", sa.BigInteger(), nullable=False),
        sa.Column("net_tx_bytes", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("server_id", name=op.f("pk_guest_metric_counters")),
    )
    with op.batch_alter_table("guest_metric_counters", schema=None) as batch_op:
        batch_op.create_index("ix_guest_metric_counters_at_ms", ["at_ms"], unique=False)
    op.create_table(
        "guest_metric_rollups",
        sa.Column("server_id", sa.String(length=36), nullable=False),
        sa.Column("step", sa.Integer(), nullable=False),
        sa.Column("bucket", sa.BigInteger(), nullable=False),
        sa.Column("samples", sa.Integer(), nullable=False),
        sa.Column("cpu_util_sum", sa.Float(), nullable=False),
        sa.Column("memory_used_mb_sum", sa.Float(), nullable=False),
        sa.Column("disk_read_bps_sum", sa.Float(), nullable=False),
        sa.Column("disk_write_bps_sum", sa.Float(), nullable=False),
        sa.Column("net_rx_bps_sum", sa.Float(), nullable=False),
        sa.Column("net_tx_bps_sum", sa.Float(), nullable=False),
        sa.PrimaryKeyConstraint("server_id", "step", "bucket",
                                name=op.f("pk_guest_metric_rollups")),
    )
    with op.batch_alter_table("guest_metric_rollups", schema=None) as batch_op:
        batch_op.create_index("ix_guest_metric_rollups_step_bucket", ["step", "bucket"],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table("guest_metric_rollups", schema=None) as batch_op:
        batch_op.drop_index("ix_guest_metric_rollups_step_bucket")
    op.drop_table("guest_metric_rollups")
    with op.batch_alter_table("guest_metric_counters", schema=None) as batch_op:
        batch_op.drop_index("ix_guest_metric_counters_at_ms")
    op.drop_table("guest_metric_counters")
