"""live migration: the migration endpoint each host's agent registers

Revision ID: 0014_live_migration
Revises: 0010_migrations
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0014_live_migration"
down_revision: str | None = "0010_migrations"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("migration_endpoint", sa.JSON(), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("migration_endpoint")
