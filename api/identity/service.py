"""Identity rules: login, projects, users, roles, application credentials, bootstrap."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.config import Settings
from api.db import utcnow
from api.deps import Principal
from api.errors import Conflict, InvalidInput, NotFound, Unauthorized
from api.identity import repository
from api.models import (
    ApplicationCredential,
    Project,
    RoleAssignment,
    Token,
    User,
)
from api.security import (
    APP_CREDENTIAL_PREFIX,
    TOKEN_PREFIX,
    digest,
    hash_password,
    new_secret,
    verify_password,
)

# A fixed hash to verify against when the user does not exist, so both paths cost the same.
_DUMMY_HASH = hash_password("minicloud-timing-equaliser")


@dataclass
class IssuedToken:
    """A freshly issued token (its secret is only known here)."""

    secret: str
    token: Token
    user: User
    project: Project
    role: str


def login(session: Session, settings: Settings, user: str, password: str,
          project: str) -> IssuedToken:
    """Exchange a password for a project-scoped token; raises Unauthorized."""
    found = repository.user_by_name(session, user)
    ok = verify_password(found.password_hash if found else _DUMMY_HASH, password)
    if found is None or not ok or not found.enabled:
        raise Unauthorized("Wrong user name or password.", code="invalid_credentials")
    proj = repository.project_by_ref(session, project)
    assignment = repository.role_of(session, found.id, proj.id) if proj else None
    if proj is None or assignment is None:
        raise Unauthorized("The user has no role on that project.", code="invalid_credentials")
    secret = new_secret(TOKEN_PREFIX)
    token = Token(
        digest=digest(secret), user_id=found.id, project_id=proj.id,
        expires_at=utcnow() + timedelta(seconds=settings.token_ttl_seconds),
    )
    session.add(token)
    session.flush()
    return IssuedToken(secret, token, found, proj, assignment.role)


def revoke_current(session: Session, principal: Principal) -> None:
    """Revoke the token the caller is using (application credentials are deleted by id)."""
    if principal.credential != "token":
        raise Conflict("Delete an application credential by id.", code="not_a_token")
    token = session.get(Token, principal.credential_id)
    if token is not None:
        session.delete(token)
        session.flush()


def create_project(session: Session, name: str, description: str = "") -> Project:
    """A new project; raises Conflict when the name is taken."""
    if repository.project_by_ref(session, name) is not None:
        raise Conflict(f"A project named {name!r} exists.", code="project_exists")
    project = Project(name=name, description=description)
    session.add(project)
    session.flush()
    return project


def get_project(session: Session, principal: Principal, project_id: str) -> Project:
    """A project the caller may see (admins: any; others: their own); raises NotFound."""
    project = session.get(Project, project_id)
    if project is None or not principal.sees_project(project.id):
        raise NotFound(f"No project {project_id}.", code="project_not_found")
    return project


def delete_project(session: Session, principal: Principal, project_id: str) -> None:
    """Delete an empty project; raises NotFound or Conflict."""
    project = get_project(session, principal, project_id)
    if project.id == principal.project_id:
        raise Conflict("You cannot delete the project you are logged into.",
                       code="project_in_use")
    from api.models import Server

    if session.scalar(select(Server.id).where(Server.project_id == project.id,
                                              Server.deleted_at.is_(None)).limit(1)):
        raise Conflict("The project still has servers.", code="project_not_empty")
    session.delete(project)
    session.flush()


def create_user(session: Session, name: str, password: str, project_id: str | None,
                role: str) -> User:
    """A new user, with a role on ``project_id`` when given; raises Conflict or NotFound."""
    if repository.user_by_name(session, name) is not None:
        raise Conflict(f"A user named {name!r} exists.", code="user_exists")
    project = None
    if project_id is not None:
        project = repository.project_by_ref(session, project_id)
        if project is None:
            raise NotFound(f"No project {project_id}.", code="project_not_found")
    user = User(name=name, password_hash=hash_password(password))
    session.add(user)
    session.flush()
    if project is not None:
        session.add(RoleAssignment(user_id=user.id, project_id=project.id, role=role))
        session.flush()
    return user


def get_user(session: Session, user_id: str) -> User:
    """A user by id; raises NotFound."""
    user = session.get(User, user_id)
    if user is None:
        raise NotFound(f"No user {user_id}.", code="user_not_found")
    return user


def set_role(session: Session, project_id: str, user_id: str, role: str) -> RoleAssignment:
    """Give ``user_id`` exactly ``role`` on ``project_id``; raises NotFound."""
    if session.get(Project, project_id) is None:
        raise NotFound(f"No project {project_id}.", code="project_not_found")
    get_user(session, user_id)
    assignment = repository.role_of(session, user_id, project_id)
    if assignment is None:
        assignment = RoleAssignment(user_id=user_id, project_id=project_id, role=role)
        session.add(assignment)
    else:
        assignment.role = role
    session.flush()
    return assignment


def remove_role(session: Session, project_id: str, user_id: str) -> None:
    """Take away the user's role on the project; raises NotFound."""
    assignment = repository.role_of(session, user_id, project_id)
    if assignment is None:
        raise NotFound("The user has no role on that project.", code="role_not_found")
    session.delete(assignment)
    session.flush()


def create_app_credential(session: Session, principal: Principal, name: str,
                          expires_at: datetime | None,
                          secret: str | None = None) -> tuple[ApplicationCredential, str]:
    """A new application credential for the caller; returns it with its one-time secret."""
    if expires_at is not None:
        if expires_at.tzinfo is None:
            raise InvalidInput("expires_at needs a timezone.", code="naive_datetime")
        if expires_at <= utcnow():
            raise InvalidInput("expires_at is in the past.", code="expiry_in_past")
    if any(c.name == name for c in repository.app_credentials(session, principal.user_id)):
        raise Conflict(f"You already have a credential named {name!r}.",
                       code="credential_exists")
    secret = secret or new_secret(APP_CREDENTIAL_PREFIX)
    cred = ApplicationCredential(
        name=name, digest=digest(secret), user_id=principal.user_id,
        project_id=principal.project_id, expires_at=expires_at,
    )
    session.add(cred)
    session.flush()
    return cred, secret


def delete_app_credential(session: Session, principal: Principal, cred_id: str) -> None:
    """Delete one of the caller's application credentials; raises NotFound."""
    cred = session.get(ApplicationCredential, cred_id)
    if cred is None or cred.user_id != principal.user_id:
        raise NotFound(f"No application credential {cred_id}.", code="credential_not_found")
    session.delete(cred)
    session.flush()


def credential_expiry(session: Session, principal: Principal) -> datetime | None:
    """When the credential the caller presented expires (None: never, or it is gone)."""
    cred: Token | ApplicationCredential | None = (
        session.get(Token, principal.credential_id) if principal.credential == "token"
        else session.get(ApplicationCredential, principal.credential_id)
    )
    return cred.expires_at if cred else None


def list_projects(session: Session, principal: Principal) -> Sequence[Project]:
    """Admins: every project, by name; others: their own."""
    if principal.is_admin:
        return repository.list_projects(session)
    return [get_project(session, principal, principal.project_id)]


def list_members(session: Session, principal: Principal,
                 project_id: str) -> tuple[Project, Sequence[tuple[User, str]]]:
    """A visible project and its users with their roles, by name; raises NotFound."""
    project = get_project(session, principal, project_id)
    return project, repository.members(session, project.id)


def list_users(session: Session) -> Sequence[User]:
    """Every user, by name."""
    return repository.list_users(session)


def delete_user(session: Session, principal: Principal, user_id: str) -> None:
    """Delete a user and their credentials; raises NotFound, Conflict ``user_in_use`` for
    oneself."""
    user = get_user(session, user_id)
    if user.id == principal.user_id:
        raise Conflict("You cannot delete yourself.", code="user_in_use")
    session.delete(user)
    session.flush()


def list_app_credentials(session: Session,
                         principal: Principal) -> Sequence[ApplicationCredential]:
    """The caller's application credentials, by name."""
    return repository.app_credentials(session, principal.user_id)
