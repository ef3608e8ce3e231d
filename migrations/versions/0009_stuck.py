"""stuck: indexes for the sweep of stuck transitions; hosts' quarantined foreign domains

Revision ID: 0009_stuck
Revises: 0008_image_quotas
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0009_stuck"
down_revision: str | None = "0008_image_quotas"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("foreign_domains", sa.JSON(), nullable=True))
    with op.batch_alter_table("servers", schema=None) as batch_op:
        batch_op.create_index("ix_servers_status_updated", ["status", "updated_at"],
                              unique=False)
        batch_op.create_index("ix_servers_task_state_updated", ["task_state", "updated_at"],
                              unique=False)


def downgrade() -> None:
    with op.batch_alter_table("servers", schema=None) as batch_op:
        batch_op.drop_index("ix_servers_task_state_updated")
        batch_op.drop_index("ix_servers_status_updated")
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("foreign_domains")
