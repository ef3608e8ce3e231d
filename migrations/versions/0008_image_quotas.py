"""image quotas: quota limits are 64-bit (image_bytes)

Revision ID: 0008_image_quotas
Revises: 0007_keypairs
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0008_image_quotas"
down_revision: str | None = "0007_keypairs"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table("quotas", schema=None) as batch_op:
        batch_op.alter_column("limit", existing_type=sa.Integer(), type_=sa.BigInteger(),
                              existing_nullable=False)


def downgrade() -> None:
    with op.batch_alter_table("quotas", schema=None) as batch_op:
        batch_op.alter_column("limit", existing_type=sa.BigInteger(), type_=sa.Integer(),
                              existing_nullable=False)
