"""migrations: migration records, allocations per host, host maintenance state

Revision ID: 0010_migrations
Revises: 0010_host_health
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

from api.db import UTCDateTime

revision: str = "0010_migrations"
down_revision: str | None = "0010_host_health"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "migrations",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("server_id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=8), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("source_host_id", sa.String(length=36), nullable=False),
        sa.Column("dest_host_id", sa.String(length=36), nullable=True),
        sa.Column("server_status", sa.String(length=16), nullable=False),
        sa.Column("requested_by", sa.String(length=36), nullable=True),
        sa.Column("drain_host_id", sa.String(length=36), nullable=True),
        sa.Column("progress", sa.Integer(), nullable=False),
        sa.Column("data_remaining", sa.BigInteger(), nullable=True),
        sa.Column("fault_code", sa.String(length=64), nullable=True),
        sa.Column("fault_message", sa.Text(), nullable=True),
        sa.Column("created_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", UTCDateTime(timezone=True), nullable=False),
        sa.Column("finished_at", UTCDateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(["server_id"], ["servers.id"],
                                name=op.f("fk_migrations_server_id_servers"),
                                ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_migrations")),
    )
    with op.batch_alter_table("migrations", schema=None) as batch_op:
        batch_op.create_index("ix_migrations_server_created", ["server_id", "created_at"])
        batch_op.create_index("ix_migrations_dest_status", ["dest_host_id", "status"])
        batch_op.create_index("ix_migrations_source_status", ["source_host_id", "status"])
    with op.batch_alter_table("allocations", schema=None) as batch_op:
        batch_op.drop_constraint("uq_allocations_server_id_resource_class", type_="unique")
        batch_op.create_unique_constraint("uq_allocations_server_id_host_id_resource_class",
                                          ["server_id", "host_id", "resource_class"])
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.add_column(sa.Column("maintenance", sa.String(length=16), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("hosts", schema=None) as batch_op:
        batch_op.drop_column("maintenance")
    with op.batch_alter_table("allocations", schema=None) as batch_op:
        batch_op.drop_constraint("uq_allocations_server_id_host_id_resource_class",
                                 type_="unique")
        batch_op.create_unique_constraint("uq_allocations_server_id_resource_class",
                                          ["server_id", "resource_class"])
    op.drop_table("migrations")
