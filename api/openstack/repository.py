"""Look-ups the OpenStack surface needs beyond the services' (flush only, no writes)."""

from __future__ import annotations

from collections.abc import Sequence

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.models import ApplicationCredential, KeyPair, Server, Token, User
from api.security import digest


def app_credential_by_secret(session: Session, secret: str) -> ApplicationCredential | None:
    """The application credential whose secret this is."""
    return session.scalar(select(ApplicationCredential)
                          .where(ApplicationCredential.digest == digest(secret)))


def token_by_id(session: Session, token_id: str) -> Token | None:
    """A token row by id."""
    return session.get(Token, token_id)


def app_credential(session: Session, cred_id: str) -> ApplicationCredential | None:
    """An application credential row by id."""
    return session.get(ApplicationCredential, cred_id)


def user(session: Session, user_id: str) -> User | None:
    """A user by id."""
    return session.get(User, user_id)


def keypair_names_by_key(session: Session, user_ids: set[str]) -> dict[tuple[str, str], str]:
    """(user id, public key) -> key pair name, for showing servers' ``key_name``."""
    rows = session.execute(select(KeyPair.user_id, KeyPair.public_key, KeyPair.name)
                           .where(KeyPair.user_id.in_(user_ids))).all()
    return {(u, k): n for u, k, n in rows}


def servers_by_ids(session: Session, ids: list[str]) -> Sequence[Server]:
    """Server rows (deleted ones included: usage reports name them too)."""
    return session.scalars(select(Server).where(Server.id.in_(ids))).all()
