"""host_health: hosts' reconcile-loop progress (degraded hosts) and the host_down publication mark

Revision ID: 0010_host_health
Revises: 0013_scaling_groups
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import api.db

revision: str = "0010_host_health"
down_revision: str | None = "0013_scaling_groups"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("loop_progress", sa.JSON(), nullable=True))
        batch_op.add_column(sa.Column("loop_progress_at", api.db.UTCDateTime(timezone=True),
                                      nullable=True))
        batch_op.add_column(sa.Column("down_published_for",
                                      api.db.UTCDateTime(timezone=True), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("down_published_for")
        batch_op.drop_column("loop_progress_at")
        batch_op.drop_column("loop_progress")
