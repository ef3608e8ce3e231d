"""Identity request and response models."""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from pydantic import BaseModel, ConfigDict, Field

from api.fields import ID_PATTERN, STRICT, Description, ShortName

Role = Literal["admin", "member", "reader"]


class TokenCreate(BaseModel):
    """Log in with a password, scoped to one project (name or id)."""

    model_config = STRICT
    user: ShortName
    password: str = Field(min_length=1, max_length=1024)
    project: str = Field(min_length=1, max_length=64, pattern=ID_PATTERN)  # a name or an id


class IdName(BaseModel):
    """A reference to an object by id and name."""

    id: str
    name: str


class TokenOut(BaseModel):
    """A token and what it stands for; the token itself is shown only here."""

    token: str | None = None
    expires_at: datetime | None
    user: IdName
    project: IdName
    role: Role
    credential: str


class ProjectCreate(BaseModel):
    """A new project."""

    model_config = STRICT
    name: ShortName
    description: Description = ""


class ProjectOut(BaseModel):
    """A project."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    description: str
    created_at: datetime


class UserCreate(BaseModel):
    """A new user, optionally given a role on a project at once."""

    model_config = STRICT
    name: ShortName
    password: str = Field(min_length=8, max_length=1024)
    project_id: str | None = Field(default=None, max_length=64, pattern=ID_PATTERN)
    role: Role = "member"


class PasswordChange(BaseModel):
    """The caller's current password and the new one."""

    model_config = STRICT
    old_password: str = Field(min_length=1, max_length=1024)
    new_password: str = Field(min_length=8, max_length=1024)


class UserPatch(BaseModel):
    """What an admin may change on a user."""

    model_config = STRICT
    enabled: bool


class UserOut(BaseModel):
    """A user (never the password)."""

    model_config = ConfigDict(from_attributes=True)
    id: str
    name: str
    enabled: bool
    created_at: datetime


class RoleSet(BaseModel):
    """The role a user holds on a project."""

    model_config = STRICT
    role: Role


class MemberOut(BaseModel):
    """A user's role on a project."""

    user_id: str
    user_name: str
    project_id: str
    role: Role


class AppCredentialCreate(BaseModel):
    """A long-lived credential for the caller on the caller's project."""

    model_config = STRICT
    name: ShortName
    expires_at: datetime | None = None


class AppCredentialOut(BaseModel):
    """An application credential; ``secret`` is only present when it is created."""

    id: str
    name: str
    project_id: str
    expires_at: datetime | None
    created_at: datetime
    secret: str | None = None
