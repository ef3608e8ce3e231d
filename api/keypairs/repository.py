"""Key pair queries (flush only)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.db import after_key
from api.models import KeyPair


def by_name(session: Session, user_id: str, name: str) -> KeyPair | None:
    """The user's key pair called ``name``."""
    return session.scalar(select(KeyPair).where(KeyPair.user_id == user_id,
                                                KeyPair.name == name))


def of_user(session: Session, user_id: str, *, after: str | None = None,
            limit: int | None = None) -> Sequence[KeyPair]:
    """The user's key pairs, by name (unique per user), starting after the name ``after``."""
    query = select(KeyPair).where(KeyPair.user_id == user_id)
    if after is not None:
        query = query.where(after_key((KeyPair.name,), (after,)))
    return session.scalars(query.order_by(KeyPair.name).limit(limit)).all()
