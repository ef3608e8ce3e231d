"""Request dependencies: the unit of work and who is asking."""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass
from typing import Annotated

from fastapi import Depends, Header, Request
from sqlalchemy import select
from sqlalchemy.orm import Session

from api.config import Settings
from api.db import session_scope, utcnow
from api.errors import Forbidden, Unauthorized
from api.models import ApplicationCredential, Host, Project, RoleAssignment, Token, User
from api.security import digest


def get_app_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


def get_session(request: Request) -> Iterator[Session]:
    """One unit of work per request: commit on success, roll back on error."""
    yield from session_scope(request.app.state.sessionmaker)


# scope="function": commit before the response is sent, so a client never sees 2xx for a
# write that is not yet (or never) committed.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


@dataclass(frozen=True)
class Principal:
    """A user acting within one project with one role."""

    user_id: str
    user_name: str
    project_id: str
    project_name: str
    role: str
    credential: str  # "token" or "application_credential"
    credential_id: str

    @property
    def is_admin(self) -> bool:
        """Cloud administrator: sees and manages every project."""
        return self.role == "admin"

    @property
    def project_scope(self) -> str | None:
        """The project whose objects the caller sees (None: admins see every project)."""
        return None if self.is_admin else self.project_id

    def sees_project(self, project_id: str) -> bool:
        """Whether the caller sees objects of ``project_id`` (its own; admins every one)."""
        return self.is_admin or project_id == self.project_id

    @property
    def can_write(self) -> bool:
        """Members and admins change things; readers only look."""
        return self.role in ("admin", "member")


@dataclass(frozen=True)
class HostPrincipal:
    """A compute agent acting for its own host only."""

    host_id: str
    host_name: str


def _bearer(authorization: str | None) -> str:
    if not authorization:
        raise Unauthorized("Send 'Authorization: Bearer <token>'.", code="missing_token")
    scheme, _, value = authorization.partition(" ")
    if scheme.lower() != "bearer" or not value.strip():
        raise Unauthorized("Send 'Authorization: Bearer <token>'.", code="missing_token")
    return value.strip()


def _principal_for(session: Session, secret: str) -> Principal | None:
    key = digest(secret)
    now = utcnow()
    token = session.scalar(select(Token).where(Token.digest == key))
    if token is not None:
        if token.expires_at <= now:
            raise Unauthorized("The token has expired; log in again.", code="token_expired")
        user_id, project_id, kind, cred_id = token.user_id, token.project_id, "token", token.id
    else:
        cred = session.scalar(
            select(ApplicationCredential).where(ApplicationCredential.digest == key)
        )
        if cred is None:
            return None
        if cred.expires_at is not None and cred.expires_at <= now:
            raise Unauthorized("The application credential has expired.", code="token_expired")
        user_id, project_id = cred.user_id, cred.project_id
        kind, cred_id = "application_credential", cred.id
    row = session.execute(
        select(User, Project, RoleAssignment.role)
        .join(RoleAssignment, RoleAssignment.user_id == User.id)
        .join(Project, Project.id == RoleAssignment.project_id)
        .where(User.id == user_id, Project.id == project_id)
    ).first()
    if row is None or not row[0].enabled:
        return None
    user, project, role = row
    return Principal(user.id, user.name, project.id, project.name, role, kind, cred_id)


def get_principal(
    session: SessionDep, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    """The authenticated user; raises Unauthorized for a missing or unknown token."""
    principal = _principal_for(session, _bearer(authorization))
    if principal is None:
        raise Unauthorized("The token is not valid.", code="invalid_token")
    return principal


def require_writer(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    """A member or admin; raises Forbidden for readers."""
    if not principal.can_write:
        raise Forbidden("The reader role cannot change anything.", code="read_only_role")
    return principal


def require_admin(principal: Annotated[Principal, Depends(get_principal)]) -> Principal:
    """A cloud admin; raises Forbidden for everyone else."""
    if not principal.is_admin:
        raise Forbidden("This needs the admin role.", code="admin_required")
    return principal


def get_host_principal(
    session: SessionDep, authorization: Annotated[str | None, Header()] = None
) -> HostPrincipal:
    """The compute agent of one host; raises Unauthorized for anything else."""
    host = session.scalar(
        select(Host).where(Host.credential_digest == digest(_bearer(authorization)))
    )
    if host is None:
        raise Unauthorized("Not a host credential.", code="invalid_host_credential")
    return HostPrincipal(host.id, host.name)


CurrentUser = Annotated[Principal, Depends(get_principal)]
Writer = Annotated[Principal, Depends(require_writer)]
AdminUser = Annotated[Principal, Depends(require_admin)]
CurrentHost = Annotated[HostPrincipal, Depends(get_host_principal)]
