"""Push, not poll: waking a host's waiting long-poll when its desired state changed.

A waiting ``GET /v1/agent/servers?since=...&wait=...`` is an asyncio event in a per-host
registry (:class:`Waiters`): it holds no thread, no database connection and runs no SQL while
it waits. Whatever changes a host's desired state calls :func:`host_changed` inside its unit
of work (``lifecycle.notify_host``, credential rotation and revocation, host deletion); the
host id is remembered in the session and the waiters are woken only **after the commit**
(a SQLAlchemy ``after_commit`` hook), so a woken poll always reads the committed change. A
rolled-back unit of work wakes nobody.

Across API processes (PostgreSQL) the same call also runs ``pg_notify('minicloud_desired',
<host id>)`` in the transaction; PostgreSQL delivers it at commit to every listening session,
and each API process keeps one listening connection (:func:`listen`) that wakes its own
waiters. SQLite runs a single API process: the in-process wake-up is all there is.

A missed notification (a listener reconnecting, a change made outside these paths) costs at
most one long-poll period: the answer at the end of every wait re-reads the database, and a
listener that (re)connects wakes all of its process's waiters so each re-reads once.

A notification may carry notes about the host's change (:func:`annotate`), space-separated
after the host id: ``<host id> <note> <note>``. The listener hands them to the process's
:func:`subscribe` callbacks (the scheduler's snapshot cache follows other processes' claims
this way). A note is a hint for a cache, never the only way to learn a change: a subscriber
must stay correct when notes are late or lost.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
import threading
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.orm import Session, SessionTransaction

from api.agent import repository

log = logging.getLogger("minicloud.agent.notifier")

CHANNEL = "minicloud_desired"
"""The PostgreSQL NOTIFY channel; the payload is the host id, then its notes (if any)."""

_PENDING = "minicloud.hosts_changed"
_NOTES = "minicloud.host_notes"  # session.info: host id -> notes for its notification

NoteSubscriber = Callable[[str, list[str]], None]
"""Called by the listener with a host id and the notes its notification carried."""

_SUBSCRIBERS: list[NoteSubscriber] = []


@dataclass(eq=False)
class Waiter:
    """One waiting long-poll: set from any thread through its own event loop."""

    loop: asyncio.AbstractEventLoop
    event: asyncio.Event = field(default_factory=asyncio.Event)

    def wake(self) -> None:
        """Set the event from whichever thread calls (a commit runs in the thread pool)."""
        with contextlib.suppress(RuntimeError):  # the loop is gone: nobody waits any more
            self.loop.call_soon_threadsafe(self.event.set)


class Waiters:
    """The process's registry of waiting long-polls, by host id (thread-safe).

    ``version(host)`` counts the wake-ups of a host: a poll reads it *before* it reads its
    cursor and registers with it, so a change committed between the two is not missed.
    ``stamp(host)`` adds the epoch, which :meth:`wake_all` moves: what a process remembers
    of a host (``api.agent.fastpath``) is valid while the host's stamp is unchanged.
    ``wakes()`` counts every wake-up of every host.
    """

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._by_host: dict[str, set[Waiter]] = {}
        self._versions: dict[str, int] = {}
        self._epoch = 0
        self._wakes = 0

    def version(self, host_id: str) -> int:
        """How many times the host was woken in this process."""
        with self._lock:
            return self._versions.get(host_id, 0)

    def stamp(self, host_id: str) -> tuple[int, int]:
        """(epoch, version of the host): changes on every wake-up of the host or of all."""
        with self._lock:
            return self._epoch, self._versions.get(host_id, 0)

    def wakes(self) -> int:
        """How many wake-ups (of any host) this process has seen."""
        with self._lock:
            return self._wakes

    def register(self, host_id: str, seen: int) -> Waiter:
        """A new waiter for the host; already set when the host was woken since ``seen``."""
        waiter = Waiter(asyncio.get_running_loop())
        with self._lock:
            self._by_host.setdefault(host_id, set()).add(waiter)
            if self._versions.get(host_id, 0) != seen:
                waiter.event.set()
        return waiter

    def unregister(self, host_id: str, waiter: Waiter) -> None:
        """Forget a waiter (its poll answered or went away)."""
        with self._lock:
            waiting = self._by_host.get(host_id)
            if waiting is not None:
                waiting.discard(waiter)
                if not waiting:
                    del self._by_host[host_id]

    def wake(self, host_ids: Iterable[str]) -> None:
        """Wake every poll waiting for one of ``host_ids``."""
        woken: list[Waiter] = []
        with self._lock:
            self._wakes += 1
            for host_id in host_ids:
                self._versions[host_id] = self._versions.get(host_id, 0) + 1
                woken.extend(self._by_host.get(host_id, ()))
        for waiter in woken:
            waiter.wake()

    def wake_all(self) -> None:
        """Wake every waiting poll and move the epoch (after notifications may have been
        missed: everything remembered of any host is dropped)."""
        with self._lock:
            self._epoch += 1
            hosts = list(self._by_host)
        self.wake(hosts)

    def waiting(self) -> int:
        """How many polls wait right now."""
        with self._lock:
            return sum(len(w) for w in self._by_host.values())


WAITERS = Waiters()
"""The registry of this process (one event loop serves every request of a process)."""


def host_changed(session: Session, host_id: str) -> None:
    """Wake the host's waiting long-polls once this unit of work commits.

    On PostgreSQL this also queues ``pg_notify`` in the transaction, for the other API
    processes (delivered at commit, dropped on rollback); once per host and transaction.
    """
    pending: set[str] = session.info.setdefault(_PENDING, set())
    if host_id in pending:
        return
    pending.add(host_id)
    if session.get_bind().dialect.name == "postgresql":
        notes: list[str] = session.info.get(_NOTES, {}).pop(host_id, [])
        repository.notify(session, CHANNEL, " ".join((host_id, *notes)))


def annotate(session: Session, host_id: str, note: str) -> None:
    """Send ``note`` (no spaces) with the host's notification of this unit of work, if
    :func:`host_changed` has not sent it yet (PostgreSQL; nothing elsewhere). Other API
    processes' :func:`subscribe` callbacks receive it once the unit of work commits."""
    if session.get_bind().dialect.name == "postgresql":
        session.info.setdefault(_NOTES, {}).setdefault(host_id, []).append(note)


def subscribe(callback: NoteSubscriber) -> None:
    """Call ``callback(host_id, notes)`` for every notification with notes this process's
    listener receives (its own process's included). It runs on the event loop: keep it
    short, and never let it block."""
    _SUBSCRIBERS.append(callback)


def deliver(payload: str, waiters: Waiters) -> None:
    """Act on one notification's payload: wake the host's polls, hand notes to subscribers."""
    host_id, _, rest = payload.partition(" ")
    waiters.wake((host_id,))
    if rest:
        notes = rest.split(" ")
        for callback in _SUBSCRIBERS:
            try:
                callback(host_id, notes)
            except Exception:  # a subscriber's bug must not stop the wake-ups
                log.exception("notification subscriber %r failed", callback)


@event.listens_for(Session, "after_commit")
def _wake_after_commit(session: Session) -> None:
    # A savepoint's commit fires this too (placement claims in savepoints): only the
    # outermost commit makes the change visible to the poll that wakes.
    if session.in_nested_transaction():
        return
    pending: set[str] | None = session.info.pop(_PENDING, None)
    if pending:
        WAITERS.wake(pending)


@event.listens_for(Session, "after_transaction_end")
def _forget_after_rollback(session: Session, transaction: SessionTransaction) -> None:
    # The outermost transaction ended without the commit above: nothing to announce. A
    # rolled-back savepoint keeps the pending hosts (a needless wake-up costs one read).
    if transaction.parent is None:
        session.info.pop(_PENDING, None)
        session.info.pop(_NOTES, None)


# ---------------------------------------------------------------- PostgreSQL LISTEN

_BACKOFF_FIRST, _BACKOFF_MAX = 0.5, 30.0


def conninfo(database_url: str) -> str:
    """A libpq connection string for psycopg from an SQLAlchemy URL."""
    return make_url(database_url).set(drivername="postgresql").render_as_string(
        hide_password=False)


async def listen(database_url: str, waiters: Waiters, stop: asyncio.Event) -> None:
    """Wake ``waiters`` on every ``NOTIFY minicloud_desired`` until ``stop`` is set.

    One connection per API process, outside the pool. When it fails the listener reconnects
    with exponential backoff (0.5 s doubling to 30 s); after each (re)connect every waiting
    poll is woken once, since notifications sent while nobody listened are lost.
    """
    import psycopg  # only PostgreSQL deployments need the driver

    backoff = _BACKOFF_FIRST
    while not stop.is_set():
        try:
            async with await psycopg.AsyncConnection.connect(
                    conninfo(database_url), autocommit=True) as conn:
                await conn.execute(f"LISTEN {CHANNEL}")
                backoff = _BACKOFF_FIRST
                waiters.wake_all()
                async for note in conn.notifies():
                    deliver(note.payload, waiters)
        except asyncio.CancelledError:
            raise
        except Exception:  # any driver or network error: reconnect after a pause
            log.warning("desired-state listener lost its connection; reconnecting in %.1fs",
                        backoff, exc_info=True)
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), backoff)
        backoff = min(backoff * 2, _BACKOFF_MAX)


__all__ = ["CHANNEL", "WAITERS", "NoteSubscriber", "Waiter", "Waiters", "annotate", "deliver",
           "host_changed", "listen", "subscribe"]
