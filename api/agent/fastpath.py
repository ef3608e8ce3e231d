"""The idle fleet's fast path: an idle host's heartbeat and long-poll without FastAPI or SQL.

An idle fleet sends two kinds of requests that change nothing: heartbeats of hosts that are up
whose agent has nothing new to report (``observed == []``, ``foreign`` unchanged: the agent
sends only what changed since its last acknowledged heartbeat), and long-polls whose wait ends
without a change. :class:`AgentFastPath`, a plain ASGI layer outside every middleware, answers
them from what this process remembers (:data:`MEMORY`):

* **credentials** it checked against the database (digest -> host), valid while the host's
  stamp (``api.agent.notifier.Waiters.stamp``) is unchanged and for at most
  ``host_credential_cache_seconds``. Rotation, revocation and deletion wake the host in every
  API process (in-process after the commit, ``pg_notify`` elsewhere), which moves the stamp;
  a listener that reconnects moves every stamp. The coalesced flush writes a heartbeat only
  while the host still has the credential it presented (``repository.record_heartbeats``).
* **hosts it heard** (host -> when, loop passes): a host whose heartbeat this process handled
  less than ``host_down_after_seconds / 2`` ago is up (``service.heartbeat``'s rule), so a
  heartbeat with nothing new only goes to the coalescing buffer (``api.agent.liveness``).
* **cursors it answered** (host -> cursor, stamp read before the cursor): a long-poll whose
  ``since`` is that cursor waits at once; at the end of a wait with no wake-up the cursor is
  re-read, and an unchanged one is answered ``304 Not Modified``. The polls whose waits end
  in the same tick (:data:`RECHECK_TICK`) share one statement (:class:`CursorReads`); a poll
  stays registered for wake-ups until its re-read is back, so a change made during the tick
  is answered at once.

Everything else (and anything this layer cannot parse) goes to the application unchanged.
"""

from __future__ import annotations

import asyncio
import math
import re
import threading
import time
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime, timedelta
from urllib.parse import parse_qs, urlencode

from fastapi.concurrency import run_in_threadpool
from pydantic import ValidationError
from sqlalchemy import Engine
from sqlalchemy.orm import Session
from starlette.types import ASGIApp, Message, Receive, Scope, Send

from api.agent import liveness, notifier, service
from api.agent.repository import ConfirmationRow, confirmation_rows
from api.agent.schemas import HeartbeatIn, HeartbeatOut, ObservedItem
from api.config import Settings
from api.db import utcnow
from api.deps import host_of_credential
from api.metrics import (
    REQUEST_SECONDS,
    REQUESTS,
    observe_long_poll_end,
    request_scope,
    waiting_long_poll,
)
from api.models import Host
from api.security import digest

REQUEST_ID = re.compile(r"^[A-Za-z0-9._-]{1,64}$")
"""A request id a client may choose (anything else gets a new one)."""

HEARTBEAT, SERVERS = "/v1/agent/heartbeat", "/v1/agent/servers"
_SINCE_MAX = 64  # the route's limit of ``since``


@dataclass(frozen=True)
class _CachedHost:
    host_id: str
    stamp: tuple[int, int]
    at: float  # time.monotonic() when checked against the database


class Memory:
    """What this process remembers of hosts (thread-safe): credentials, heartbeats, cursors."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._credentials: dict[str, _CachedHost] = {}
        self._heard: dict[str, tuple[datetime, int | None]] = {}
        self._cursors: dict[str, tuple[str, tuple[int, int]]] = {}

    def clear(self) -> None:
        """Forget everything."""
        with self._lock:
            self._credentials.clear()
            self._heard.clear()
            self._cursors.clear()

    def remember_credential(self, key: str, host_id: str, stamp: tuple[int, int]) -> None:
        """The credential with digest ``key`` was the host's when its stamp was ``stamp``."""
        with self._lock:
            self._credentials[key] = _CachedHost(host_id, stamp, time.monotonic())

    def host_of(self, key: str, ttl: float) -> str | None:
        """The host of a remembered credential still valid; None: ask the database."""
        with self._lock:
            hit = self._credentials.get(key)
        if hit is None:
            return None
        if (time.monotonic() - hit.at >= ttl
                or notifier.WAITERS.stamp(hit.host_id) != hit.stamp):
            with self._lock:
                if self._credentials.get(key) is hit:
                    del self._credentials[key]
            return None
        return hit.host_id

    def heard(self, host_id: str, at: datetime, passes: int | None) -> None:
        """This process handled a heartbeat of the host at ``at`` (the host is up)."""
        with self._lock:
            self._heard[host_id] = (at, passes)

    def last_heard(self, host_id: str) -> tuple[datetime, int | None] | None:
        """When this process last handled a heartbeat of the host, and its loop passes."""
        with self._lock:
            return self._heard.get(host_id)

    def remember_cursor(self, host_id: str, cursor: str, stamp: tuple[int, int]) -> None:
        """The host's cursor was ``cursor`` after its stamp was ``stamp``."""
        with self._lock:
            self._cursors[host_id] = (cursor, stamp)

    def cursor_of(self, host_id: str) -> tuple[str, tuple[int, int]] | None:
        """The remembered cursor and the stamp read before it."""
        with self._lock:
            return self._cursors.get(host_id)


MEMORY = Memory()
"""This process's memory (one per process, like ``notifier.WAITERS``)."""


def authenticate(session: Session, settings: Settings, authorization: str | None) -> Host:
    """The host of the bearer credential (``api.deps.host_of_credential``), remembered for the
    fast path when no wake-up could have slipped between the look-up and the stamp read.

    Raises Unauthorized ``missing_token``, ``invalid_host_credential``.
    """
    wakes = notifier.WAITERS.wakes()
    host = host_of_credential(session, authorization)
    stamp = notifier.WAITERS.stamp(host.id)
    if (settings.host_credential_cache_seconds > 0 and host.credential_digest is not None
            and notifier.WAITERS.wakes() == wakes):
        MEMORY.remember_credential(host.credential_digest, host.id, stamp)
    return host


RECHECK_TICK = 0.5
"""Seconds: the long-polls whose waits end within one tick share one re-read of their
cursors (a wait ends this much early at most, so no answer comes later than asked)."""


def _cursors(engine: Engine, host_ids: list[str]) -> dict[str, str]:
    # A bare connection: one statement needs no unit of work (and its ORM bookkeeping).
    with engine.connect() as conn:
        return service.cursors(conn, host_ids)


class CursorReads:
    """The end-of-wait re-reads of one process, coalesced: the first poll whose wait ends
    starts a tick; every poll ending before the tick is over joins it, and one statement
    reads all their hosts' cursors (instead of a pooled connection, a statement and a
    worker thread hop per poll). Used from the event loop only."""

    def __init__(self, engine: Callable[[], Engine], tick: float, scope: dict[str, object]
                 ) -> None:
        self._engine = engine
        self._tick = tick
        self._scope = scope  # the metrics' route label of the statement
        self._loop: asyncio.AbstractEventLoop | None = None
        self._pending: dict[str, list[asyncio.Future[str | None]]] = {}
        self._tick_task: asyncio.Task[None] | None = None  # kept: the loop holds weak refs

    async def read(self, host_id: str) -> str | None:
        """The host's cursor, read in the current tick; None: the host no longer exists."""
        loop = asyncio.get_running_loop()
        if loop is not self._loop:  # a new event loop (tests): nothing pending belongs to it
            self._loop, self._pending = loop, {}
        future: asyncio.Future[str | None] = loop.create_future()
        if not self._pending:
            self._tick_task = loop.create_task(self._read_all())
        self._pending.setdefault(host_id, []).append(future)
        return await future

    async def _read_all(self) -> None:
        await asyncio.sleep(self._tick)
        pending, self._pending = self._pending, {}
        token = request_scope.set(self._scope)
        try:
            current = await run_in_threadpool(_cursors, self._engine(), list(pending))
        except Exception as exc:  # each poll fails as its own read would have
            for futures in pending.values():
                for future in futures:
                    if not future.done():
                        future.set_exception(exc)
            return
        finally:
            request_scope.reset(token)
        for host_id, futures in pending.items():
            for future in futures:
                if not future.done():  # its poll may have been cancelled meanwhile
                    future.set_result(current.get(host_id))


def _confirmation_rows(engine: Engine, host_id: str) -> dict[str, ConfirmationRow]:
    with engine.connect() as conn:
        return confirmation_rows(conn, host_id)


class _Template:
    """Stands for a matched route in the metrics' labels (``route.path``)."""

    def __init__(self, path: str) -> None:
        self.path = path


class AgentFastPath:
    """Answer idle heartbeats and unchanged long-polls of remembered hosts (module doc)."""

    def __init__(self, app: ASGIApp, settings: Settings, engine: Callable[[], Engine],
                 recheck_tick: float = RECHECK_TICK) -> None:
        self.app = app
        self.settings = settings
        self.engine = engine
        self.enabled = settings.host_credential_cache_seconds > 0
        self.half_down = timedelta(seconds=settings.host_down_after_seconds) / 2
        self._hb_ok = REQUESTS.labels("POST", HEARTBEAT, "2xx")
        self._hb_seconds = REQUEST_SECONDS.labels("POST", HEARTBEAT)
        self._poll_seconds = REQUEST_SECONDS.labels("GET", SERVERS)
        self._poll_unchanged = REQUESTS.labels("GET", SERVERS, "3xx")
        self.recheck_tick = recheck_tick
        self._reads = CursorReads(engine, recheck_tick, {"route": _Template(SERVERS)})
        self._heartbeat_scope = {"route": _Template(HEARTBEAT)}
        # Confirmation reads at once (a worker thread and a connection each).
        self._confirm_turns = asyncio.Semaphore(settings.agent_admission_concurrency)

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if self.enabled and scope["type"] == "http":
            path, method = scope["path"], scope["method"]
            if path == HEARTBEAT and method == "POST":
                await self._heartbeat(scope, receive, send)
                return
            if path == SERVERS and method == "GET":
                await self._servers(scope, receive, send)
                return
        await self.app(scope, receive, send)

    # -------------------------------------------------------------------- shared parts

    def _host(self, scope: Scope) -> tuple[str | None, str, bytes, bytes | None]:
        """(remembered host of the bearer credential, the credential's digest, request id,
        content length)."""
        authorization = given = length = None
        for name, value in scope["headers"]:
            if name == b"authorization":
                authorization = value
            elif name == b"x-request-id":
                given = value
            elif name == b"content-length":
                length = value
        rid = (given if given is not None and REQUEST_ID.match(given.decode("latin-1"))
               else f"req-{uuid.uuid4()}".encode())
        host_id, key = None, ""
        if authorization is not None:
            scheme, _, secret = authorization.decode("latin-1").partition(" ")
            secret = secret.strip()
            if scheme.lower() == "bearer" and secret:
                key = digest(secret)
                host_id = MEMORY.host_of(key, self.settings.host_credential_cache_seconds)
        return host_id, key, rid, length

    # -------------------------------------------------------------------- heartbeat

    async def _heartbeat(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        host_id, key, rid, length = self._host(scope)
        if host_id is None or length is None or not length.isdigit() \
                or int(length) > self.settings.max_request_body_bytes:
            await self.app(scope, receive, send)
            return
        chunks: list[bytes] = []
        while True:
            message = await receive()
            if message["type"] != "http.request":
                return  # the client went away before its body arrived
            chunks.append(message.get("body", b""))
            if not message.get("more_body", False):
                break
        body = b"".join(chunks)
        answer = await self._idle_heartbeat(host_id, key, body)
        if answer is None:
            await self.app(scope, _replay(body, receive), send)
            return
        await send({"type": "http.response.start", "status": 200, "headers": [
            (b"content-type", b"application/json"),
            (b"content-length", str(len(answer)).encode()), (b"x-request-id", rid)]})
        await send({"type": "http.response.body", "body": answer})
        self._hb_ok.inc()
        self._hb_seconds.observe(time.perf_counter() - started)

    async def _idle_heartbeat(self, host_id: str, key: str, body: bytes) -> bytes | None:
        """The answer to a heartbeat with nothing new of a host this process heard lately,
        or whose observations all confirm what is stored (:meth:`_confirmed`); None: not
        such a heartbeat (the application handles it)."""
        try:
            beat = HeartbeatIn.model_validate_json(body)
        except ValidationError:
            return None
        if beat.foreign is not None:
            return None
        last = MEMORY.last_heard(host_id)
        now = utcnow()
        if last is None or now - last[0] >= self.half_down:
            return None  # maybe down: the full path decides (and asks for a full report)
        applied = await self._confirmed(host_id, beat.observed, now) if beat.observed else 0
        if applied is None:
            return None
        progress = beat.progress
        passes = progress.passes if progress is not None else None
        # The pass count moved since this process last heard it: the loop progresses (the
        # rule of ``hosts.service.progress_moved``, against what this process saw).
        moved = progress is not None and passes != last[1]
        liveness.HEARTBEATS.record(
            host_id, key, now, progress.model_dump(mode="json") if progress is not None else None,
            now if moved else None)
        MEMORY.heard(host_id, now, passes if progress is not None else last[1])
        return HeartbeatOut(
            host_id=host_id, last_heartbeat_at=now, applied=applied, ignored=[],
            heartbeat_interval_seconds=self.settings.heartbeat_interval_seconds,
        ).model_dump_json().encode()

    async def _confirmed(self, host_id: str, observed: list[ObservedItem],
                         now: datetime) -> int | None:
        """How many observations apply when all confirm the stored state
        (``service.confirmed``, one Core read in a worker thread); None: the application
        decides. At most ``agent_admission_concurrency`` reads run at once; a heartbeat that
        waited ``agent_admission_wait_seconds`` for a turn, or whose read failed, goes to
        the application (its admission answers ``agent_busy``, its errors a problem)."""
        try:
            await asyncio.wait_for(self._confirm_turns.acquire(),
                                   self.settings.agent_admission_wait_seconds)
        except TimeoutError:
            return None
        token = request_scope.set(self._heartbeat_scope)
        try:
            rows = await run_in_threadpool(_confirmation_rows, self.engine(), host_id)
        except Exception:  # the application answers it properly
            return None
        finally:
            request_scope.reset(token)
            self._confirm_turns.release()
        return service.confirmed(rows, observed, now)

    # -------------------------------------------------------------------- long-poll

    async def _servers(self, scope: Scope, receive: Receive, send: Send) -> None:
        started = time.perf_counter()
        host_id, _, rid, _ = self._host(scope)
        since, wait = _poll_params(scope["query_string"])
        remembered = MEMORY.cursor_of(host_id) if host_id is not None else None
        if host_id is None or since is None or wait is None or wait <= 0 \
                or remembered is None or remembered[0] != since \
                or notifier.WAITERS.stamp(host_id) != remembered[1]:
            await self.app(scope, receive, send)
            return
        # The end-of-wait re-read joins the current tick (CursorReads): the wait ends up to
        # one tick early, so the answer still comes within ``wait``.
        timeout = max(0.0, min(wait, self.settings.agent_long_poll_max_seconds)
                      - self.recheck_tick)
        # Registered with the version read before the cursor was: a wake-up since is seen.
        waiter = notifier.WAITERS.register(host_id, remembered[1][1])
        consumed: list[Message] = []
        current: str | None = None
        try:
            how = await waiting_long_poll(wait_for_change(receive, consumed, waiter, timeout))
            if how == "timeout":
                # Still registered while the tick's re-read runs (up to a tick): a change
                # committed meanwhile answers at once instead of waiting for the read.
                current, woken = await self._reread(host_id, waiter)
                if woken:
                    how = "notified"
        finally:
            notifier.WAITERS.unregister(host_id, waiter)
        observe_long_poll_end(how)
        if how == "disconnected":
            return
        if how == "timeout" and current == since:
            await send({"type": "http.response.start", "status": 304,
                        "headers": [(b"x-request-id", rid)]})
            await send({"type": "http.response.body", "body": b""})
            self._poll_unchanged.inc()
            self._poll_seconds.observe(time.perf_counter() - started)
            return
        # A change (or a credential to check again): the application answers at once.
        answer = dict(scope, query_string=urlencode({"since": since}).encode())
        await self.app(answer, _replay_messages(consumed, receive), send)

    async def _reread(self, host_id: str, waiter: notifier.Waiter) -> tuple[str | None, bool]:
        """The host's cursor from the current tick's shared re-read, or a wake-up of
        ``waiter`` if one comes first: (cursor, False) or (None, True)."""
        read = asyncio.ensure_future(self._reads.read(host_id))
        woken = asyncio.ensure_future(waiter.event.wait())
        try:
            done, _ = await asyncio.wait((read, woken), return_when=asyncio.FIRST_COMPLETED)
        finally:
            woken.cancel()
        if read in done:
            return read.result(), False  # a failed read fails the poll, as before
        read.cancel()
        return None, True


def _poll_params(query: bytes) -> tuple[str | None, float | None]:
    """``since`` and ``wait`` when each is given once and well formed, else Nones."""
    try:
        params = parse_qs(query.decode("ascii"), strict_parsing=True)
    except (UnicodeDecodeError, ValueError):
        return None, None
    since, wait = params.get("since"), params.get("wait")
    if since is None or wait is None or len(since) != 1 or len(wait) != 1 \
            or len(params) != 2 or len(since[0]) > _SINCE_MAX:
        return None, None
    try:
        seconds = float(wait[0])
    except ValueError:
        return None, None
    if not math.isfinite(seconds) or not 0 <= seconds <= 30:
        return None, None
    return since[0], seconds


async def wait_for_change(receive: Receive, consumed: list[Message], waiter: notifier.Waiter,
                          timeout: float) -> str:
    """Wait for a wake-up, the timeout or the client leaving; say which came first. The
    messages received meanwhile go to ``consumed`` (to be handed on to the application)."""

    async def gone() -> None:
        while True:
            message = await receive()
            consumed.append(message)
            if message["type"] == "http.disconnect":
                return

    woken = asyncio.ensure_future(waiter.event.wait())
    left = asyncio.ensure_future(gone())
    try:
        done, _ = await asyncio.wait((woken, left), timeout=timeout,
                                     return_when=asyncio.FIRST_COMPLETED)
    finally:
        woken.cancel()
        left.cancel()
    return "notified" if woken in done else "disconnected" if left in done else "timeout"


def _replay(body: bytes, receive: Receive) -> Receive:
    """A receive that hands over the body read already, then the client's next messages."""
    return _replay_messages([{"type": "http.request", "body": body, "more_body": False}],
                            receive)


def _replay_messages(messages: list[Message], receive: Receive) -> Receive:
    pending = list(messages)

    async def replay() -> Message:
        if pending:
            return pending.pop(0)
        return await receive()

    return replay
