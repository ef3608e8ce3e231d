"""Key pair queries (flush only)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.models import KeyPair


def by_name(session: Session, user_id: str, name: str) -> KeyPair | None:
    """The user's key pair called ``name``."""
    return session.scalar(select(KeyPair).where(KeyPair.user_id == user_id,
                                                KeyPair.name == name))


def of_user(session: Session, user_id: str) -> Sequence[KeyPair]:
    """The user's key pairs, by name."""
    return session.scalars(select(KeyPair).where(KeyPair.user_id == user_id)
                           .order_by(KeyPair.name)).all()
