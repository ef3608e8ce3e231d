"""Identity rules: login, projects, users, roles, application credentials, bootstrap."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass
from datetime import datetime, timedelta

from sqlalchemy import select
from sqlalchemy.orm import Session

from api.config import Settings
from api.db import utcnow
from api.deps import Principal
from api.errors import Conflict, Forbidden, InvalidInput, NotFound, TooManyRequests, Unauthorized
from api.identity import auth_cache, repository
from api.models import (
    ApplicationCredential,
    Project,
    RoleAssignment,
    Token,
    User,
)
from api.pagination import MAX_PAGE, Page, invalid_marker, page_of
from api.security import (
    APP_CREDENTIAL_PREFIX,
    TOKEN_PREFIX,
    digest,
    hash_password,
    hash_password_bounded,
    new_secret,
    verify_password_bounded,
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


def begin_login(session: Session, settings: Settings, user: str,
                address: str) -> str:
    """Count a login attempt against the throttle and return the hash to verify against.

    Every attempt counts as a failure until ``finish_login`` proves otherwise, so concurrent
    guesses cannot slip past the limit. The address is counted first: an address over its
    limit creates no rows for the names it tries.

    Raises TooManyRequests ``login_throttled`` (the unit of work rolls back, so a refused
    attempt does not extend anything).
    """
    count_password_attempt(session, settings, user, address)
    found = repository.user_by_name(session, user)
    return found.password_hash if found is not None else _DUMMY_HASH


def count_password_attempt(session: Session, settings: Settings, user: str,
                           address: str) -> None:
    """Count one password check of ``user`` from ``address``; raises TooManyRequests.

    Logins and password changes share the count, so a stolen token does not open a second
    way to guess the password.
    """
    now = utcnow()
    window = timedelta(seconds=settings.login_throttle_window_seconds)
    for key, limit in ((_address_key(address), settings.login_failures_per_address),
                       (_user_key(user), settings.login_failures_per_user)):
        failures, started = repository.count_login_attempt(session, key, now, now - window)
        if failures > limit:
            retry_after = max(1, math.ceil((started + window - now).total_seconds()))
            raise TooManyRequests("Too many failed logins; try again later.",
                                  code="login_throttled", retry_after=retry_after)


def _password_was_good(session: Session, user: str, address: str) -> None:
    # Address row first, then user row: the order ``count_password_attempt`` locks them in,
    # so two transactions never wait on each other's rows (a PostgreSQL deadlock).
    repository.forget_login_attempt(session, _address_key(address))
    repository.clear_login_failures(session, _user_key(user))


def finish_login(session: Session, settings: Settings, user: str, password_ok: bool,
                 project: str, address: str) -> IssuedToken:
    """Issue a project-scoped token after a good password; raises Unauthorized.

    A good login clears the user name's failures and takes its own attempt back from the
    address's count; a bad one leaves the counts ``begin_login`` made.
    """
    found = repository.user_by_name(session, user)
    if found is None or not password_ok or not found.enabled:
        raise Unauthorized("Wrong user name or password.", code="invalid_credentials")
    proj = repository.project_by_ref(session, project)
    assignment = repository.role_of(session, found.id, proj.id) if proj else None
    if proj is None or assignment is None:
        raise Unauthorized("The user has no role on that project.", code="invalid_credentials")
    _password_was_good(session, user, address)
    secret = new_secret(TOKEN_PREFIX)
    token = Token(
        digest=digest(secret), user_id=found.id, project_id=proj.id,
        expires_at=utcnow() + timedelta(seconds=settings.token_ttl_seconds),
    )
    session.add(token)
    session.flush()
    return IssuedToken(secret, token, found, proj, assignment.role)


def _user_key(user: str) -> str:
    return f"user:{user}"


def _address_key(address: str) -> str:
    return f"addr:{address}"


def change_password(session: Session, principal: Principal, old: str, new: str,
                    address: str) -> None:
    """Replace the caller's password and revoke every token of theirs.

    The caller has counted the attempt with ``count_password_attempt`` in a unit of work of
    its own (committed, so a wrong password counts); a right one takes it back.
    Application credentials stay: they are separate secrets the user manages by id.
    Raises Forbidden ``app_credential_forbidden`` for an application credential (it must not
    turn into a password), Forbidden ``wrong_password`` when ``old`` does not match.
    """
    refuse_app_credential(principal)
    user = get_user(session, principal.user_id)
    if not verify_password_bounded(user.password_hash, old):
        raise Forbidden("The current password is wrong.", code="wrong_password")
    user.password_hash = hash_password_bounded(new)
    repository.delete_tokens(session, user.id)
    auth_cache.changed(session)
    _password_was_good(session, user.name, address)
    session.flush()


def set_user_enabled(session: Session, principal: Principal, user_id: str,
                     enabled: bool) -> User:
    """Enable or disable a user (admin); disabling revokes every token and credential.

    Raises NotFound, Conflict ``user_in_use`` when admins disable themselves.
    """
    user = get_user(session, user_id)
    if not enabled and user.id == principal.user_id:
        raise Conflict("You cannot disable yourself.", code="user_in_use")
    user.enabled = enabled
    if not enabled:
        repository.delete_tokens(session, user.id)
        repository.delete_app_credentials(session, user.id)
        auth_cache.changed(session)
    session.flush()
    return user


def refuse_app_credential(principal: Principal) -> None:
    """Raises Forbidden ``app_credential_forbidden`` when the caller is an application
    credential."""
    # A leaked application credential must not be able to outlive its own deletion by
    # minting more credentials, nor turn itself into a password.
    if principal.credential == "application_credential":
        raise Forbidden("An application credential cannot manage credentials; log in with "
                        "a password.", code="app_credential_forbidden")


def revoke_current(session: Session, principal: Principal) -> None:
    """Revoke the token the caller is using (application credentials are deleted by id)."""
    if principal.credential != "token":
        raise Conflict("Delete an application credential by id.", code="not_a_token")
    token = session.get(Token, principal.credential_id)
    if token is not None:
        session.delete(token)
        session.flush()
    auth_cache.changed(session)


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
    auth_cache.changed(session)
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
    user = User(name=name, password_hash=hash_password_bounded(password))
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
        auth_cache.changed(session)
    session.flush()
    return assignment


def remove_role(session: Session, project_id: str, user_id: str) -> None:
    """Take away the user's role on the project; raises NotFound."""
    assignment = repository.role_of(session, user_id, project_id)
    if assignment is None:
        raise NotFound("The user has no role on that project.", code="role_not_found")
    session.delete(assignment)
    auth_cache.changed(session)
    session.flush()


def create_app_credential(session: Session, principal: Principal, name: str,
                          expires_at: datetime | None,
                          secret: str | None = None) -> tuple[ApplicationCredential, str]:
    """A new application credential for the caller; returns it with its one-time secret.

    Raises Forbidden ``app_credential_forbidden`` when the caller is itself an application
    credential, InvalidInput, Conflict ``credential_exists``.
    """
    refuse_app_credential(principal)
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
    auth_cache.changed(session)
    session.flush()


def credential_expiry(session: Session, principal: Principal) -> datetime | None:
    """When the credential the caller presented expires (None: never, or it is gone)."""
    cred: Token | ApplicationCredential | None = (
        session.get(Token, principal.credential_id) if principal.credential == "token"
        else session.get(ApplicationCredential, principal.credential_id)
    )
    return cred.expires_at if cred else None


def list_projects(session: Session, principal: Principal, *, limit: int = MAX_PAGE,
                  marker: str | None = None) -> Page[Project]:
    """A page of the projects the caller sees (admins: every project, by name; others: their
    own); raises DomainError ``invalid_marker`` for a marker that is not one of them."""
    mark = session.get(Project, marker) if marker is not None else None
    if marker is not None and (mark is None or not principal.sees_project(mark.id)):
        raise invalid_marker()
    if not principal.is_admin:
        own = [] if mark is not None else [get_project(session, principal, principal.project_id)]
        return Page(own, None)
    after = (mark.name, mark.id) if mark is not None else None
    rows = repository.list_projects(session, after=after, limit=limit + 1)
    return page_of(rows, limit, lambda p: p.id)


def list_members(session: Session, principal: Principal,
                 project_id: str) -> tuple[Project, Sequence[tuple[User, str]]]:
    """A visible project and its users with their roles, by name; raises NotFound."""
    project = get_project(session, principal, project_id)
    return project, repository.members(session, project.id)


def list_users(session: Session, *, limit: int = MAX_PAGE,
               marker: str | None = None) -> Page[User]:
    """A page of every user, by name; raises DomainError ``invalid_marker`` for a marker that
    is no user."""
    after = None
    if marker is not None:
        mark = session.get(User, marker)
        if mark is None:
            raise invalid_marker()
        after = (mark.name, mark.id)
    return page_of(repository.list_users(session, after=after, limit=limit + 1), limit,
                   lambda u: u.id)


def delete_user(session: Session, principal: Principal, user_id: str) -> None:
    """Delete a user and their credentials; raises NotFound, Conflict ``user_in_use`` for
    oneself."""
    user = get_user(session, user_id)
    if user.id == principal.user_id:
        raise Conflict("You cannot delete yourself.", code="user_in_use")
    session.delete(user)
    auth_cache.changed(session)
    session.flush()


def list_app_credentials(session: Session, principal: Principal, *, limit: int = MAX_PAGE,
                         marker: str | None = None) -> Page[ApplicationCredential]:
    """A page of the caller's application credentials, by name; raises DomainError
    ``invalid_marker`` for a marker that is not one of them."""
    after = None
    if marker is not None:
        mark = session.get(ApplicationCredential, marker)
        if mark is None or mark.user_id != principal.user_id:
            raise invalid_marker()
        after = (mark.name, mark.id)
    rows = repository.app_credentials(session, principal.user_id, after=after, limit=limit + 1)
    return page_of(rows, limit, lambda c: c.id)
