"""Engine and session factory, and the declarative Base with a naming convention."""

from __future__ import annotations

import logging
import sqlite3
import threading
import uuid
from collections import deque
from collections.abc import Callable, Iterator, Sequence
from datetime import UTC, datetime
from typing import Any, TypeAlias

from sqlalchemy import (
    ColumnElement,
    DateTime,
    Engine,
    MetaData,
    and_,
    create_engine,
    event,
    or_,
)
from sqlalchemy.engine import Dialect
from sqlalchemy.exc import DBAPIError, IntegrityError, InterfaceError, OperationalError
from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import DeclarativeBase, QueryableAttribute, Session, sessionmaker
from sqlalchemy.types import TypeDecorator

NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}


class Base(DeclarativeBase):
    """Base of every model; one MetaData, so Alembic sees the whole schema."""

    metadata = MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(TypeDecorator[datetime]):
    """A timezone-aware UTC timestamp on every backend (SQLite stores it naive)."""

    impl = DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            raise ValueError("naive datetime given; use timezone-aware UTC")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            return value.replace(tzinfo=UTC)
        return value.astimezone(UTC)


def utcnow() -> datetime:
    """Now, timezone-aware UTC."""
    return datetime.now(UTC)


def new_id() -> str:
    """A new random UUID as text."""
    return str(uuid.uuid4())


log = logging.getLogger("minicloud.db")


class WriteGate:
    """A process-wide FIFO queue for SQLite write transactions on one database file.

    SQLite has one writer at a time; a writer that finds the database locked sleeps in its
    busy handler (1, 2, 5 ... 100 ms) and retries, so under load the lock goes to whoever
    polls at the right moment: with 8 threads the unlucky ones waited seconds (p99 6 s in the
    scheduler bench). Threads of one process instead queue here in arrival order before their
    first write statement and leave at commit or rollback, so SQLite's lock is free when they
    reach it. Other processes still meet SQLite's own locking.
    """

    def __init__(self) -> None:
        self._cond = threading.Condition()
        self._holder: object | None = None
        self._queue: deque[object] = deque()

    def acquire(self, holder: object, timeout: float) -> bool:
        """Wait for the turn of ``holder`` (a connection); False after ``timeout`` seconds."""
        with self._cond:
            if self._holder is holder:
                return True
            ticket = object()
            self._queue.append(ticket)
            try:
                ok = self._cond.wait_for(
                    lambda: self._holder is None and self._queue[0] is ticket, timeout)
            finally:
                self._queue.remove(ticket)
                self._cond.notify_all()  # the next ticket may be first now
            if ok:
                self._holder = holder
            return ok

    def release(self, holder: object) -> None:
        """End the turn of ``holder``, if it has it."""
        with self._cond:
            if self._holder is holder:
                self._holder = None
                self._cond.notify_all()


_GATES: dict[str, WriteGate] = {}
_GATES_LOCK = threading.Lock()


def write_gate(database: str) -> WriteGate:
    """The process's gate for one SQLite database file."""
    with _GATES_LOCK:
        return _GATES.setdefault(database, WriteGate())


class GatedConnection(sqlite3.Connection):
    """A pysqlite connection that leaves its ``WriteGate`` turn once its transaction ends."""

    gate: WriteGate | None = None
    holding = False

    def _leave(self) -> None:
        if self.holding and self.gate is not None:
            self.holding = False
            self.gate.release(self)

    def commit(self) -> None:
        """Commit, then let the next queued writer in."""
        try:
            super().commit()
        finally:
            self._leave()

    def rollback(self) -> None:
        """Roll back, then let the next queued writer in."""
        try:
            super().rollback()
        finally:
            self._leave()

    def close(self) -> None:
        """Close, then let the next queued writer in."""
        try:
            super().close()
        finally:
            self._leave()


_WRITES = ("INSERT", "UPDATE", "DELETE", "REPLAC")


def _enter_gate(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
    # pysqlite opens the transaction (and SQLite takes its write lock) at the first write
    # statement: queue for the gate right before it.
    dbapi = conn.connection.dbapi_connection
    if (not isinstance(dbapi, GatedConnection) or dbapi.holding or dbapi.gate is None
            or statement.lstrip()[:6].upper() not in _WRITES):
        return
    if dbapi.gate.acquire(dbapi, timeout=_GATE_TIMEOUT):
        dbapi.holding = True
    else:  # e.g. one thread writing through two connections: SQLite's busy timeout decides
        log.warning("SQLite write gate not acquired within %ss; going on", _GATE_TIMEOUT)


_GATE_TIMEOUT = 30.0


def take_write_gate(session: Session) -> None:
    """SQLite: check out ``session``'s connection and take its ``WriteGate`` turn now, as its
    first write would (blocking: run it in a worker thread). From then on the unit of work
    waits for nothing in this process: no pool checkout and no other writer. The turn ends
    with the transaction, as ever."""
    dbapi = session.connection().connection.dbapi_connection
    if isinstance(dbapi, GatedConnection) and not dbapi.holding and dbapi.gate is not None:
        if dbapi.gate.acquire(dbapi, timeout=_GATE_TIMEOUT):
            dbapi.holding = True
        else:
            log.warning("SQLite write gate not acquired within %ss; going on", _GATE_TIMEOUT)


def _begin_before_savepoint(conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
    # pysqlite begins a transaction only before a write statement. A SAVEPOINT sent outside
    # one makes SQLite start the transaction itself, and releasing that savepoint commits
    # it: a unit of work whose first write is in a savepoint would keep that write after
    # rolling back the rest. Begin first, so the savepoint nests in the unit of work.
    dbapi = conn.connection.dbapi_connection
    if not dbapi.in_transaction and statement.lstrip()[:9].upper() == "SAVEPOINT":
        dbapi.execute("BEGIN")


def _sqlite_pragmas(dbapi_connection: Any, _record: Any) -> None:
    # WAL lets readers run beside the one writer; the busy timeout makes writers queue
    # instead of failing; foreign keys are off by default in SQLite.
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA busy_timeout=30000")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.close()


def make_engine(url: str, *, pool_size: int | None = None, max_overflow: int | None = None,
                pool_timeout: float | None = None, lock_timeout: float | None = None,
                **kwargs: Any) -> Engine:
    """Create an engine for ``url`` with the per-backend settings minicloud relies on.

    ``pool_size``, ``max_overflow`` and ``pool_timeout`` size the connection pool (default:
    SQLAlchemy's 5 + 10 and 30 s on SQLite, 10 + 20 on PostgreSQL); an in-memory SQLite
    database has no such pool and ignores them. ``lock_timeout`` (PostgreSQL, seconds) bounds
    each statement's wait for a lock (default: the server's setting, no bound).

    SQLite keeps pysqlite's default transaction handling: a transaction begins at the first
    write statement (or before a savepoint, which then nests in it), so a unit of work that
    writes first (see ``lock_project``) holds the database write lock for its whole critical
    section and never hits a stale read snapshot.
    Write transactions of one process queue in a ``WriteGate`` (first come, first served).
    """
    pool = {k: v for k, v in (("pool_size", pool_size), ("max_overflow", max_overflow),
                               ("pool_timeout", pool_timeout)) if v is not None}
    if url.startswith("sqlite"):
        if url.rstrip("/") in ("sqlite:", "sqlite:/") or ":memory:" in url:
            pool = {}
        engine = create_engine(
            url,
            connect_args={"timeout": 30, "check_same_thread": False,
                          "factory": GatedConnection},
            **pool, **kwargs,
        )
        gate = write_gate(engine.url.database or url)

        def connect(dbapi_connection: Any, record: Any) -> None:
            _sqlite_pragmas(dbapi_connection, record)
            if isinstance(dbapi_connection, GatedConnection):
                dbapi_connection.gate = gate

        event.listen(engine, "connect", connect)
        event.listen(engine, "before_cursor_execute", _begin_before_savepoint)
        event.listen(engine, "before_cursor_execute", _enter_gate)
        return engine
    pool = {"pool_size": 10, "max_overflow": 20} | pool
    if lock_timeout is not None:
        kwargs["connect_args"] = kwargs.get("connect_args", {}) | {
            "options": f"-c lock_timeout={max(1, round(lock_timeout * 1000))}"}
    return create_engine(url, pool_pre_ping=True, **pool, **kwargs)


# SQLite primary result codes (https://sqlite.org/rescode.html).
_SQLITE_BUSY = {5, 6}  # BUSY, LOCKED
_SQLITE_UNAVAILABLE = {8, 10, 11, 13, 14, 26}  # READONLY, IOERR, CORRUPT, FULL, CANTOPEN, NOTADB


def database_trouble(exc: BaseException) -> str | None:
    """Whether ``exc`` means the database is busy or unreachable rather than a bug.

    Returns ``database_busy`` (no pool connection within the pool timeout, SQLite locked,
    PostgreSQL out of connections or a lock not granted within the lock timeout),
    ``database_unavailable`` (no connection can be made or it was lost: refused, terminated,
    shut down) or None for anything else, e.g. a deadlock or a constraint, which keeps its
    own handling.
    """
    if isinstance(exc, PoolTimeout):
        return "database_busy"
    if not isinstance(exc, DBAPIError) or isinstance(exc, IntegrityError):
        return None
    if exc.connection_invalidated:
        return "database_unavailable"
    orig = exc.orig
    if isinstance(orig, sqlite3.Error):
        primary = (getattr(orig, "sqlite_errorcode", None) or 0) & 0xFF
        if primary in _SQLITE_BUSY:
            return "database_busy"
        return "database_unavailable" if primary in _SQLITE_UNAVAILABLE else None
    sqlstate = getattr(orig, "sqlstate", None)
    if sqlstate is None:  # psycopg: a failed or broken connection carries no SQLSTATE
        return "database_unavailable" if isinstance(exc, OperationalError | InterfaceError) \
            else None
    if sqlstate.startswith(("08", "57P")):  # connection exception, admin shutdown
        return "database_unavailable"
    # insufficient resources; lock_not_available (the lock timeout)
    return "database_busy" if sqlstate.startswith("53") or sqlstate == "55P03" else None


SessionFactory: TypeAlias = sessionmaker[Session]
"""A session factory: each ``session_scope`` over it is one unit of work."""


def make_sessionmaker(engine: Engine) -> SessionFactory:
    """A session factory bound to ``engine``; objects stay usable after commit."""
    return sessionmaker(bind=engine, expire_on_commit=False, autoflush=True)


def session_scope(factory: sessionmaker[Session]) -> Iterator[Session]:
    """One unit of work: commit on success, roll back on any error."""
    session = factory()
    try:
        yield session
        session.commit()
    except BaseException:
        session.rollback()
        raise
    finally:
        session.close()


def after_key(columns: Sequence[QueryableAttribute[Any]],
              key: Sequence[Any]) -> ColumnElement[bool]:
    """Rows after ``key`` in the order of ``columns`` (the last one unique): the keyset
    condition of a page, spelled out because row-value comparison is not portable."""
    first, *rest = columns
    later: ColumnElement[bool] = first > key[0]
    if not rest:
        return later
    return or_(later, and_(first == key[0], after_key(rest, key[1:])))


# Callables to run once the session's root transaction has committed (``on_commit``).
_ON_COMMIT = "on_commit"
# Set by a commit, read when its transaction ends: was the transaction that ended committed?
_COMMITTED = "on_commit_committed"


def on_commit(session: Session, hook: Callable[[], None]) -> None:
    """Run ``hook`` after the session's current root transaction commits; never when it rolls
    back, nor when any rollback (a savepoint's too) happens in it after ``hook`` was given: a
    hook may describe writes that such a rollback undid."""
    session.info.setdefault(_ON_COMMIT, []).append(hook)


@event.listens_for(Session, "after_commit")
def _note_commit(session: Session) -> None:
    # Fires for a savepoint's release too; ``_transaction_ended`` tells the two apart.
    session.info[_COMMITTED] = True


@event.listens_for(Session, "after_soft_rollback")
def _drop_hooks(session: Session, _previous: Any) -> None:
    session.info.pop(_ON_COMMIT, None)


@event.listens_for(Session, "after_transaction_end")
def _transaction_ended(session: Session, transaction: Any) -> None:
    committed = session.info.pop(_COMMITTED, False)
    if transaction.parent is not None:
        return  # a savepoint: its commit is not the root's
    hooks = session.info.pop(_ON_COMMIT, None)
    if committed and hooks:
        for hook in hooks:
            hook()
