"""keypairs: users' named SSH public keys

Revision ID: 0007_keypairs
Revises: 0006_hostsec
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import api.db

revision: str = "0007_keypairs"
down_revision: str | None = "0006_hostsec"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "keypairs",
        sa.Column("id", sa.String(36), nullable=False),
        sa.Column("user_id", sa.String(36), nullable=False),
        sa.Column("name", sa.String(255), nullable=False),
        sa.Column("type", sa.String(16), nullable=False),
        sa.Column("public_key", sa.Text(), nullable=False),
        sa.Column("fingerprint", sa.String(128), nullable=False),
        sa.Column("created_at", api.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(["user_id"], ["users.id"],
                                name=op.f("fk_keypairs_user_id_users"), ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_keypairs")),
        sa.UniqueConstraint("user_id", "name", name=op.f("uq_keypairs_user_id_name")),
    )
    op.create_index(op.f("ix_keypairs_user_id"), "keypairs", ["user_id"])


def downgrade() -> None:
    op.drop_index(op.f("ix_keypairs_user_id"), table_name="keypairs")
    op.drop_table("keypairs")
