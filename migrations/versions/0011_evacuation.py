"""evacuation: servers of down hosts rebuilt elsewhere, and the fence orders of those hosts

Revision ID: 0011_evacuation
Revises: 0012_guest_metrics
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from api.db import UTCDateTime

revision: str = "0011_evacuation"
down_revision: str | None = "0012_guest_metrics"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "evacuations",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("batch_id", sa.String(length=36), nullable=False),
        sa.Column("host_id", sa.String(length=36), nullable=False),
        sa.Column("server_id", sa.String(length=36), nullable=False),
        sa.Column("target_host_id", sa.String(length=36), nullable=True),
        sa.Column("result", sa.String(length=16), nullable=False),
        sa.Column("message", sa.Text(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("requested_by", sa.String(length=36), nullable=True),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("fenced_at", UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["host_id"], ["hosts.id"],
                                name=op.f("fk_evacuations_host_id_hosts"), ondelete="CASCADE"),
        sa.ForeignKeyConstraint(["server_id"], ["servers.id"],
                                name=op.f("fk_evacuations_server_id_servers"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_evacuations")),
    )
    op.create_index("ix_evacuations_host_fenced", "evacuations", ["host_id", "fenced_at"],
                    unique=False)
    op.create_index(op.f("ix_evacuations_batch_id"), "evacuations", ["batch_id"], unique=False)
    op.create_index(op.f("ix_evacuations_server_id"), "evacuations", ["server_id"],
                    unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_evacuations_server_id"), table_name="evacuations")
    op.drop_index(op.f("ix_evacuations_batch_id"), table_name="evacuations")
    op.drop_index("ix_evacuations_host_fenced", table_name="evacuations")
    op.drop_table("evacuations")
