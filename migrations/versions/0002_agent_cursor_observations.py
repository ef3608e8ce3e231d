"""agent long-poll cursor and idempotent observations

Revision ID: 0002
Revises: 0001
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import api.db

revision: str = "0002"
down_revision: str | None = "0001"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(
            sa.Column("desired_generation", sa.Integer(), server_default="0", nullable=False)
        )
    op.create_table(
        "agent_observations",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("host_id", sa.String(length=36), nullable=False),
        sa.Column("idempotency_key", sa.String(length=128), nullable=False),
        sa.Column("server_id", sa.String(length=36), nullable=False),
        sa.Column("state", sa.String(length=16), nullable=False),
        sa.Column("seen_at", api.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("transition", sa.String(length=40), nullable=False),
        sa.Column("created_at", api.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["host_id"], ["hosts.id"],
            name=op.f("fk_agent_observations_host_id_hosts"), ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["server_id"], ["servers.id"],
            name=op.f("fk_agent_observations_server_id_servers"), ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_agent_observations")),
        sa.UniqueConstraint(
            "host_id", "idempotency_key",
            name=op.f("uq_agent_observations_host_id_idempotency_key"),
        ),
    )
    with op.batch_alter_table("agent_observations", schema=None) as batch_op:
        batch_op.create_index(
            "ix_agent_observations_server_seen", ["server_id", "seen_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("agent_observations", schema=None) as batch_op:
        batch_op.drop_index("ix_agent_observations_server_seen")
    op.drop_table("agent_observations")
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("desired_generation")
