"""login throttle and one-way system flags

Revision ID: 0006_hostsec
Revises: 0005_meter_prices
Create Date: 2026-11-29 15:20:00
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

import api.db

revision: str = "0006_hostsec"
down_revision: str | None = "0005_meter_prices"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.create_table('login_failures',
    sa.Column('key', sa.String(length=160), nullable=False),
    sa.Column('failures', sa.Integer(), nullable=False),
    sa.Column('window_started_at', api.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('key', name=op.f('pk_login_failures'))
    )
    flags = op.create_table('system_flags',
    sa.Column('name', sa.String(length=64), nullable=False),
    sa.Column('set_at', api.db.UTCDateTime(timezone=True), nullable=False),
    sa.PrimaryKeyConstraint('name', name=op.f('pk_system_flags'))
    )
    # A cloud that already has users was bootstrapped: the env token must not run again.
    bind = op.get_bind()
    if bind.execute(sa.text("SELECT 1 FROM users LIMIT 1")).first() is not None:
        op.bulk_insert(flags, [{"name": "bootstrapped", "set_at": api.db.utcnow()}])


def downgrade() -> None:
    op.drop_table('system_flags')
    op.drop_table('login_failures')
