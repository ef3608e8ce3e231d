"""Request dependencies: the unit of work and who is asking."""

from __future__ import annotations

import asyncio
import weakref
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import datetime
from typing import Annotated, Any, TypeVar

import anyio.to_thread
from anyio import CapacityLimiter
from fastapi import Depends, Header, Request
from fastapi.concurrency import run_in_threadpool
from sqlalchemy import Select, and_, bindparam, select
from sqlalchemy.orm import Session

from api.config import Settings
from api.db import take_write_gate, utcnow
from api.errors import Forbidden, Unauthorized
from api.identity import auth_cache
from api.models import ApplicationCredential, Host, Project, RoleAssignment, Token, User
from api.security import digest


# Dependencies that do no I/O are async: FastAPI runs a sync one in a worker thread, a hop
# that costs more than the function itself.
async def get_app_settings(request: Request) -> Settings:
    """The settings the app was created with."""
    settings: Settings = request.app.state.settings
    return settings


SettingsDep = Annotated[Settings, Depends(get_app_settings)]


async def get_session(request: Request) -> AsyncIterator[Session]:
    """One unit of work per request: commit on success, roll back on error.

    Async, because making a session does no I/O (it takes a connection at its first
    statement): only its end, the commit or rollback and the close, runs in the thread pool.
    That is one thread hop per request instead of two for a sync dependency (its start and
    its end). The end runs outside the pool's shared capacity, as FastAPI runs a sync
    dependency's end: a request holding a connection must always be able to give it back.
    """
    session = request.app.state.sessionmaker()
    try:
        yield session
    except BaseException:
        if not session.info.get(_ENDED):
            await anyio.to_thread.run_sync(_end, session, False, limiter=CapacityLimiter(1))
        raise
    if not session.info.get(_ENDED):
        await anyio.to_thread.run_sync(_end, session, True, limiter=CapacityLimiter(1))


_ENDED = "unit_of_work_ended"
T = TypeVar("T")


async def in_unit_of_work(session: Session, work: Callable[..., T], *args: Any) -> T:
    """Run a route's blocking ``work(*args)`` and then end the request's unit of work (commit,
    or roll back when ``work`` raises; then close); ``get_session`` has nothing left to do.
    For hot async routes of write turns (``WriteTurn``): a sync route costs a hop for the
    route, one for validating its answer and one for the session's end; this costs one, and
    the answer is validated on the event loop.

    On PostgreSQL ``work`` and the end run in a worker thread: they wait for the database
    over the network. On SQLite a worker thread only checks out the connection and takes
    the process's write gate (``db.take_write_gate``, the only waits); ``work`` and the end
    then run on the event loop itself, which waits for nothing more. Under a write turn
    the loop would otherwise only alternate with that thread for the interpreter lock, and
    the two threads' turns on two cores cost about a tenth more CPU per create than one
    thread doing both.
    """

    def run() -> T:
        session.info[_ENDED] = True
        try:
            result = work(*args)
        except BaseException:
            _end(session, False)
            raise
        _end(session, True)
        return result

    if session.get_bind().dialect.name == "sqlite":
        await run_in_threadpool(take_write_gate, session)
        return run()
    return await run_in_threadpool(run)


def _end(session: Session, commit: bool) -> None:
    """Commit (or roll back) and close ``session``; a failed commit rolls back and raises."""
    try:
        if commit:
            session.commit()
        else:
            session.rollback()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


# scope="function": commit before the response is sent, so a client never sees 2xx for a
# write that is not yet (or never) committed.
SessionDep = Annotated[Session, Depends(get_session, scope="function")]


class WriteTurns:
    """Write-heavy requests take turns, in arrival order, at most ``capacity`` at once per API
    process, before their unit of work starts and until it has committed (``write_turn``).

    SQLite has one writer (``capacity`` 1): concurrent creates would only queue at its write
    lock (``api.db``'s ``WriteGate``), each holding a worker thread while it waits and
    contending for the GIL with the one that writes. On PostgreSQL writers of different rows
    run at once, but one process runs one thread of Python at a time: beyond a couple of
    writers per process (one in Python while another waits for the database) more only
    contend for the GIL and the cores, each holding a thread and a connection. Waiting here
    instead costs an asyncio waiter, not a thread. One semaphore per event loop (a test
    client runs its own loop).
    """

    def __init__(self, capacity: int = 1) -> None:
        self.capacity = capacity
        self._turns: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop,
                                               asyncio.Semaphore] = weakref.WeakKeyDictionary()

    def turns(self) -> asyncio.Semaphore:
        """The turns of the running event loop."""
        loop = asyncio.get_running_loop()
        turns = self._turns.get(loop)
        if turns is None:
            turns = self._turns[loop] = asyncio.Semaphore(self.capacity)
        return turns


async def write_turn(request: Request) -> AsyncIterator[None]:
    """Route dependency (list it before the session): wait for one of this process's write
    turns (``WriteTurns``), and give it back once the request's unit of work has ended."""
    turns: WriteTurns | None = getattr(request.app.state, "write_turns", None)
    if turns is None:
        yield
        return
    async with turns.turns():
        yield


# Declared first among a route's dependencies (``dependencies=[WriteTurn]``), so it is
# entered before the session and left after the session's commit.
WriteTurn = Depends(write_turn, scope="function")


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


def _who(credential: Any) -> Select[Any]:
    """The credential row joined (outer) with the role of its user on its project::

        SELECT c.id, c.expires_at, u.id, u.name, u.enabled, p.id, p.name, ra.role
          FROM <credentials> c
          LEFT JOIN role_assignments ra
                 ON ra.user_id = c.user_id AND ra.project_id = c.project_id
          LEFT JOIN users u ON u.id = ra.user_id
          LEFT JOIN projects p ON p.id = ra.project_id
         WHERE c.digest = :digest
    """
    return (
        select(credential.id, credential.expires_at, User.id, User.name, User.enabled,
               Project.id, Project.name, RoleAssignment.role)
        .select_from(credential)
        .outerjoin(RoleAssignment, and_(RoleAssignment.user_id == credential.user_id,
                                        RoleAssignment.project_id == credential.project_id))
        .outerjoin(User, User.id == RoleAssignment.user_id)
        .outerjoin(Project, Project.id == RoleAssignment.project_id)
        .where(credential.digest == bindparam("digest"))
    )


# Built once: one statement per credential kind, only its digest changes.
_TOKEN_QUERY = _who(Token)
_APP_CREDENTIAL_QUERY = _who(ApplicationCredential)


def _lookup(session: Session, key: str) -> tuple[Principal | None, datetime | None]:
    """Who the secret with digest ``key`` is (None: nobody), and when it expires.

    A token is tried first, then an application credential: one query each. Raises
    Unauthorized ``token_expired`` for an expired one.
    """
    now = utcnow()
    kind = "token"
    row = session.execute(_TOKEN_QUERY, {"digest": key}).first()
    if row is not None:
        if row[1] <= now:
            raise Unauthorized("The token has expired; log in again.", code="token_expired")
    else:
        kind = "application_credential"
        row = session.execute(_APP_CREDENTIAL_QUERY, {"digest": key}).first()
        if row is None:
            return None, None
        if row[1] is not None and row[1] <= now:
            raise Unauthorized("The application credential has expired.", code="token_expired")
    cred_id, expires_at, user_id, user_name, enabled, project_id, project_name, role = row
    if role is None or not enabled:
        return None, None
    return Principal(user_id, user_name, project_id, project_name, role, kind,
                     cred_id), expires_at


def _principal_for(session: Session, secret: str) -> Principal | None:
    """Who ``secret`` is: from the process's short cache (``api.identity.auth_cache``) when
    it answered within its TTL, else from the database. Raises Unauthorized
    ``token_expired``."""
    hit = _cached_principal(session, secret)
    if hit is not None:
        return hit
    key = digest(secret)
    cache = auth_cache.for_session(session)
    seen = auth_cache.epoch()
    principal_or_none, expires_at = _lookup(session, key)
    if cache is not None and principal_or_none is not None:
        cache.put(key, principal_or_none, expires_at, seen)
    return principal_or_none


def get_principal(
    session: SessionDep, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    """The authenticated user; raises Unauthorized for a missing or unknown token."""
    principal = _principal_for(session, _bearer(authorization))
    if principal is None:
        raise Unauthorized("The token is not valid.", code="invalid_token")
    return principal


async def current_principal(
    session: SessionDep, authorization: Annotated[str | None, Header()] = None
) -> Principal:
    """``get_principal`` as a dependency: a credential the process's cache knows is answered
    on the event loop (no I/O, no thread hop); only a miss reads the database, in the thread
    pool. Raises what ``get_principal`` raises."""
    hit = _cached_principal(session, _bearer(authorization))
    if hit is not None:
        return hit
    return await run_in_threadpool(get_principal, session, authorization)


def _cached_principal(session: Session, secret: str) -> Principal | None:
    """Who ``secret`` is if the process's cache answers, else None (ask the database).
    Raises Unauthorized ``token_expired`` for a cached credential that has expired."""
    cache = auth_cache.for_session(session)
    hit = cache.get(digest(secret)) if cache is not None else None
    if hit is None:
        return None
    if hit.expires_at is not None and hit.expires_at <= utcnow():
        raise Unauthorized("The token has expired; log in again."
                           if hit.value.credential == "token"
                           else "The application credential has expired.",
                           code="token_expired")
    principal: Principal = hit.value
    return principal


async def require_writer(
    principal: Annotated[Principal, Depends(current_principal)],
) -> Principal:
    """A member or admin; raises Forbidden for readers."""
    if not principal.can_write:
        raise Forbidden("The reader role cannot change anything.", code="read_only_role")
    return principal


def require_admin(principal: Principal) -> Principal:
    """A cloud admin; raises Forbidden for everyone else."""
    if not principal.is_admin:
        raise Forbidden("This needs the admin role.", code="admin_required")
    return principal


async def admin_principal(
    principal: Annotated[Principal, Depends(current_principal)],
) -> Principal:
    """``require_admin`` as a dependency (a cloud admin; raises Forbidden otherwise)."""
    return require_admin(principal)


def host_of_credential(session: Session, authorization: str | None) -> Host:
    """The host whose credential the bearer header carries; raises Unauthorized otherwise.

    Never cached: a rotated, revoked or fenced host credential is refused by the next request
    in every API process.
    """
    host = session.scalar(_HOST_BY_DIGEST, {"digest": digest(_bearer(authorization))})
    if host is None:
        raise Unauthorized("Not a host credential.", code="invalid_host_credential")
    return host


_HOST_BY_DIGEST = select(Host).where(Host.credential_digest == bindparam("digest"))


def get_host_principal(
    session: SessionDep, authorization: Annotated[str | None, Header()] = None
) -> HostPrincipal:
    """The compute agent of one host; raises Unauthorized for anything else."""
    host = host_of_credential(session, authorization)
    return HostPrincipal(host.id, host.name)


CurrentUser = Annotated[Principal, Depends(current_principal)]
Writer = Annotated[Principal, Depends(require_writer)]
AdminUser = Annotated[Principal, Depends(admin_principal)]
CurrentHost = Annotated[HostPrincipal, Depends(get_host_principal)]
