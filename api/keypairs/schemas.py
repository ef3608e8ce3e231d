"""Key pair request and response models."""

from __future__ import annotations

from datetime import datetime

from pydantic import BaseModel, Field

from api.fields import STRICT, Name
from api.servers.schemas import SshPublicKey


class KeyPairCreate(BaseModel):
    """A new key pair: import ``public_key``, or leave it out to have one generated."""

    model_config = STRICT
    name: Name
    public_key: SshPublicKey | None = Field(
        default=None, description="an OpenSSH public key; absent: an ed25519 pair is generated")


class KeyPairOut(BaseModel):
    """A key pair (``private_key`` only in the answer that generated it)."""

    name: str
    type: str
    fingerprint: str
    public_key: str
    user_id: str
    created_at: datetime
    private_key: str | None = None


class KeyPairList(BaseModel):
    """The caller's key pairs."""

    keypairs: list[KeyPairOut]
