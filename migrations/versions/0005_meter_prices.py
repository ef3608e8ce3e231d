"""meter prices: rate card prices keyed by meter price key (one JSON column)

A rate card's prices move from one column per meter to ``prices`` (price key -> decimal
text), so a new meter adds no column: its migration only gives the cards already stored a
price for its key. Derived usage pieces are named by billing state (``exists``, ``running``)
instead of by resource (``disk``, ``compute``).

Revision ID: 0005_meter_prices
Revises: 0004
"""

from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = "0005_meter_prices"
down_revision: str | None = "0004"
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

KEYS = ("vcpu_hour", "ram_gib_hour", "disk_gib_hour")
PIECES = (("disk", "exists"), ("compute", "running"))


def upgrade() -> None:
    with op.batch_alter_table("rate_cards") as batch:
        batch.add_column(sa.Column("prices", sa.JSON(), nullable=True))
    conn = op.get_bind()
    old = sa.table("rate_cards", sa.column("id", sa.String), sa.column("prices", sa.JSON),
                   *(sa.column(k, sa.String) for k in KEYS))
    for row in conn.execute(sa.select(old.c.id, *(old.c[k] for k in KEYS))).all():
        conn.execute(old.update().where(old.c.id == row[0])
                     .values(prices=dict(zip(KEYS, row[1:], strict=True))))
    with op.batch_alter_table("rate_cards") as batch:
        batch.alter_column("prices", existing_type=sa.JSON(), nullable=False)
        for k in KEYS:
            batch.drop_column(k)
    pieces = sa.table("usage_pieces", sa.column("resource", sa.String))
    for before, after in PIECES:
        conn.execute(pieces.update().where(pieces.c.resource == before).values(resource=after))


def downgrade() -> None:
    conn = op.get_bind()
    pieces = sa.table("usage_pieces", sa.column("resource", sa.String))
    for before, after in PIECES:
        conn.execute(pieces.update().where(pieces.c.resource == after).values(resource=before))
    with op.batch_alter_table("rate_cards") as batch:
        for k in KEYS:
            batch.add_column(sa.Column(k, sa.String(length=64), nullable=True))
    new = sa.table("rate_cards", sa.column("id", sa.String), sa.column("prices", sa.JSON),
                   *(sa.column(k, sa.String) for k in KEYS))
    for card_id, prices in conn.execute(sa.select(new.c.id, new.c.prices)).all():
        conn.execute(new.update().where(new.c.id == card_id)
                     .values({k: str(prices.get(k, "0")) for k in KEYS}))
    with op.batch_alter_table("rate_cards") as batch:
        for k in KEYS:
            batch.alter_column(k, existing_type=sa.String(length=64), nullable=False)
        batch.drop_column("prices")
