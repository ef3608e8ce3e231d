"""scaling groups: groups, members (unique per group and sequence number), activities, and
the leases that elect one reconciler across API processes

Revision ID: 0013_scaling_groups
Revises: 0011_evacuation
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import api.db

revision: str = "0013_scaling_groups"
down_revision: str | None = "0011_evacuation"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table(
        "leases",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("holder", sa.String(length=128), nullable=False),
        sa.Column("expires_at", api.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("term", sa.Integer(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_leases")),
    )
    op.create_table(
        "scaling_groups",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=False),
        sa.Column("user_id", sa.String(length=36), nullable=False),
        sa.Column("name", sa.String(length=63), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("flavor_id", sa.String(length=36), nullable=False),
        sa.Column("image_id", sa.String(length=36), nullable=False),
        sa.Column("user_data", sa.Text(), nullable=True),
        sa.Column("key_data", sa.Text(), nullable=True),
        sa.Column("availability_zone", sa.String(length=64), nullable=True),
        sa.Column("server_group_id", sa.String(length=36), nullable=True),
        sa.Column("min_size", sa.Integer(), nullable=False),
        sa.Column("max_size", sa.Integer(), nullable=False),
        sa.Column("desired", sa.Integer(), nullable=False),
        sa.Column("scale_in_policy", sa.String(length=16), nullable=False),
        sa.Column("policy", sa.JSON(), nullable=True),
        sa.Column("scheduled_actions", sa.JSON(), nullable=False),
        sa.Column("recommendations", sa.JSON(), nullable=False),
        sa.Column("last_scale_out_at", api.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("schedule_checked_at", api.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("next_seq", sa.Integer(), nullable=False),
        sa.Column("failures", sa.Integer(), nullable=False),
        sa.Column("retry_at", api.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("generation", sa.Integer(), nullable=False),
        sa.Column("created_at", api.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("updated_at", api.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["flavor_id"], ["flavors.id"], name=op.f("fk_scaling_groups_flavor_id_flavors")
        ),
        sa.ForeignKeyConstraint(
            ["image_id"], ["images.id"], name=op.f("fk_scaling_groups_image_id_images")
        ),
        sa.ForeignKeyConstraint(
            ["project_id"],
            ["projects.id"],
            name=op.f("fk_scaling_groups_project_id_projects"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["server_group_id"],
            ["server_groups.id"],
            name=op.f("fk_scaling_groups_server_group_id_server_groups"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scaling_groups")),
        sa.UniqueConstraint("project_id", "name", name=op.f("uq_scaling_groups_project_id_name")),
    )
    with op.batch_alter_table("scaling_groups", schema=None) as batch_op:
        batch_op.create_index(
            batch_op.f("ix_scaling_groups_project_id"), ["project_id"], unique=False
        )

    op.create_table(
        "scaling_activities",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("group_id", sa.String(length=36), nullable=False),
        sa.Column("project_id", sa.String(length=36), nullable=False),
        sa.Column("kind", sa.String(length=16), nullable=False),
        sa.Column("result", sa.String(length=16), nullable=False),
        sa.Column("rule", sa.String(length=32), nullable=False),
        sa.Column("cause", sa.Text(), nullable=False),
        sa.Column("from_desired", sa.Integer(), nullable=False),
        sa.Column("to_desired", sa.Integer(), nullable=False),
        sa.Column("created", sa.JSON(), nullable=False),
        sa.Column("deleted", sa.JSON(), nullable=False),
        sa.Column("details", sa.JSON(), nullable=False),
        sa.Column("error", sa.JSON(), nullable=True),
        sa.Column("created_at", api.db.UTCDateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["scaling_groups.id"],
            name=op.f("fk_scaling_activities_group_id_scaling_groups"),
            ondelete="CASCADE",
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scaling_activities")),
    )
    with op.batch_alter_table("scaling_activities", schema=None) as batch_op:
        batch_op.create_index(
            "ix_scaling_activities_group_created", ["group_id", "created_at"], unique=False
        )

    op.create_table(
        "scaling_members",
        sa.Column("id", sa.String(length=36), nullable=False),
        sa.Column("group_id", sa.String(length=36), nullable=False),
        sa.Column("seq", sa.Integer(), nullable=False),
        sa.Column("server_id", sa.String(length=36), nullable=False),
        sa.Column("protected", sa.Boolean(), nullable=False),
        sa.Column("created_at", api.db.UTCDateTime(timezone=True), nullable=False),
        sa.Column("released_at", api.db.UTCDateTime(timezone=True), nullable=True),
        sa.Column("release_reason", sa.String(length=32), nullable=True),
        sa.ForeignKeyConstraint(
            ["group_id"],
            ["scaling_groups.id"],
            name=op.f("fk_scaling_members_group_id_scaling_groups"),
            ondelete="CASCADE",
        ),
        sa.ForeignKeyConstraint(
            ["server_id"], ["servers.id"], name=op.f("fk_scaling_members_server_id_servers")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_scaling_members")),
        sa.UniqueConstraint("group_id", "seq", name=op.f("uq_scaling_members_group_id_seq")),
        sa.UniqueConstraint("server_id", name=op.f("uq_scaling_members_server_id")),
    )
    with op.batch_alter_table("scaling_members", schema=None) as batch_op:
        batch_op.create_index(
            "ix_scaling_members_group_released", ["group_id", "released_at"], unique=False
        )


def downgrade() -> None:
    with op.batch_alter_table("scaling_members", schema=None) as batch_op:
        batch_op.drop_index("ix_scaling_members_group_released")

    op.drop_table("scaling_members")
    with op.batch_alter_table("scaling_activities", schema=None) as batch_op:
        batch_op.drop_index("ix_scaling_activities_group_created")

    op.drop_table("scaling_activities")
    with op.batch_alter_table("scaling_groups", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_scaling_groups_project_id"))

    op.drop_table("scaling_groups")
    op.drop_table("leases")
