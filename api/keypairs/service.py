"""Key pair rules: per user (as in Nova), generated (ed25519) or imported, never a private key
stored."""

from __future__ import annotations

import base64
import hashlib
from collections.abc import Sequence
from dataclasses import dataclass

from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey
from sqlalchemy.orm import Session

from api.deps import Principal
from api.errors import Conflict, InvalidInput, NotFound
from api.keypairs import repository
from api.models import KeyPair
from api.pagination import Page, invalid_marker, page_of
from api.servers.schemas import ServerCreate


@dataclass
class CreatedKeyPair:
    """A new key pair, with its private key when the cloud generated it (shown once)."""

    keypair: KeyPair
    private_key: str | None


def fingerprint(public_key: str) -> str:
    """The MD5 fingerprint Nova shows (``aa:bb:...``) of an OpenSSH public key line."""
    blob = base64.b64decode(public_key.split()[1])
    digest = hashlib.md5(blob, usedforsecurity=False).hexdigest()
    return ":".join(digest[i:i + 2] for i in range(0, len(digest), 2))


def _generate() -> tuple[str, str]:
    key = Ed25519PrivateKey.generate()
    private = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.OpenSSH,
                                serialization.NoEncryption()).decode()
    public = key.public_key().public_bytes(serialization.Encoding.OpenSSH,
                                           serialization.PublicFormat.OpenSSH).decode()
    return public, private


def create_keypair(session: Session, principal: Principal, name: str,
                   public_key: str | None, key_type: str = "ssh") -> CreatedKeyPair:
    """Import ``public_key`` (already validated) or generate an ed25519 pair; raises Conflict
    ``keypair_exists`` when the caller already has a key pair of that name."""
    if repository.by_name(session, principal.user_id, name) is not None:
        raise Conflict(f"Key pair {name!r} already exists.", code="keypair_exists")
    private = None
    if public_key is None:
        public_key, private = _generate()
    keypair = KeyPair(user_id=principal.user_id, name=name, type=key_type,
                      public_key=public_key, fingerprint=fingerprint(public_key))
    session.add(keypair)
    session.flush()
    return CreatedKeyPair(keypair, private)


def list_keypairs(session: Session, principal: Principal) -> Sequence[KeyPair]:
    """The caller's key pairs, by name."""
    return repository.of_user(session, principal.user_id)


def list_keypair_page(session: Session, principal: Principal, *, limit: int,
                      marker: str | None) -> Page[KeyPair]:
    """A page of the caller's key pairs, by name; the marker is a name. Raises DomainError
    ``invalid_marker`` for a marker that names none of them."""
    if marker is not None and repository.by_name(session, principal.user_id, marker) is None:
        raise invalid_marker()
    rows = repository.of_user(session, principal.user_id, after=marker, limit=limit + 1)
    return page_of(rows, limit, lambda k: k.name)


def get_keypair(session: Session, principal: Principal, name: str) -> KeyPair:
    """One of the caller's key pairs by name; raises NotFound ``keypair_not_found``."""
    keypair = repository.by_name(session, principal.user_id, name)
    if keypair is None:
        raise NotFound(f"No key pair {name!r}.", code="keypair_not_found")
    return keypair


def delete_keypair(session: Session, principal: Principal, name: str) -> None:
    """Delete one of the caller's key pairs; raises NotFound ``keypair_not_found``."""
    session.delete(get_keypair(session, principal, name))
    session.flush()


def public_key_for(session: Session, principal: Principal, name: str) -> str:
    """The public key a server create's ``key_name`` names; raises NotFound."""
    return get_keypair(session, principal, name).public_key


def with_key_data(session: Session, principal: Principal, body: ServerCreate) -> ServerCreate:
    """``body`` with its ``key_name`` resolved to ``key_data`` (the server keeps a copy of the
    key, as in Nova); raises NotFound ``keypair_not_found``, InvalidInput
    ``key_name_with_key_data`` when both are given."""
    if body.key_name is None:
        return body
    if body.key_data is not None:
        raise InvalidInput("Give key_name or key_data, not both.", code="key_name_with_key_data")
    return body.model_copy(update={"key_data": public_key_for(session, principal,
                                                              body.key_name)})
