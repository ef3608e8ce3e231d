"""Agent-facing HTTP routes (/v1/agent/...), and the tenant console endpoint."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Depends, Header, Query, Request, Response
from fastapi.concurrency import run_in_threadpool

from api.agent import fastpath, liveness, notifier, service
from api.agent.schemas import (
    ConsoleOut,
    CredentialIn,
    DesiredOut,
    EnrollIn,
    EnrollOut,
    HeartbeatIn,
    HeartbeatOut,
    InventoryIn,
    InventoryOut,
    ObservationIn,
    ObservationOut,
)
from api.config import Settings
from api.db import SessionFactory, session_scope
from api.deps import CurrentHost, CurrentUser, SessionDep, SettingsDep
from api.errors import InvalidInput, NotFound, Unauthorized
from api.fields import PathId
from api.hosts import service as hosts_service
from api.metrics import observe_long_poll_end, waiting_long_poll

router = APIRouter(prefix="/v1/agent", tags=["agent"])
console_router = APIRouter(prefix="/v1", tags=["servers"])


@router.post("/enroll", status_code=201, response_model=EnrollOut)
def enroll(body: EnrollIn, session: SessionDep) -> EnrollOut:
    """Register this compute node with a single-use enrollment token (no bearer needed)."""
    host, credential = service.enroll(session, body)
    return EnrollOut(host_id=host.id, credential=credential)


async def _object_if_json(request: Request) -> None:
    """The body may be left out, but one declared as JSON is an object: ``null`` or an
    empty body is not "no body" (raises InvalidInput)."""
    if "json" in request.headers.get("content-type", "") and \
            (await request.body()).strip() in (b"", b"null"):
        raise InvalidInput("The request body must be a JSON object.")


@router.post("/credential", status_code=201, response_model=EnrollOut,
             dependencies=[Depends(_object_if_json)])
def rotate_credential(host: CurrentHost, session: SessionDep,
                      body: CredentialIn | None = None) -> EnrollOut:
    """Replace this host's credential; the answer holds the new one, the old one is dead.

    Without a body the API chooses the new credential. The agent sends one it chose and
    stored first (``body.credential``), so a crash anywhere loses nothing: sent again, with
    either credential, the request changes nothing more.
    """
    _, credential = hosts_service.rotate_credential(
        session, host.host_id, body.credential if body is not None else None)
    return EnrollOut(host_id=host.host_id, credential=credential)


@router.put("/inventory", response_model=InventoryOut)
def put_inventory(body: InventoryIn, host: CurrentHost, session: SessionDep,
                  settings: SettingsDep) -> InventoryOut:
    """Report the host's resources."""
    return service.put_inventory(session, settings, host.host_id, body)


def _heartbeat(maker: SessionFactory, settings: Settings, authorization: str | None,
               body: HeartbeatIn) -> HeartbeatOut:
    answer: HeartbeatOut | None = None
    # No return inside the loop: leaving it early would close the unit of work unfinished
    # (rolled back); it commits when the loop ends.
    for session in session_scope(maker):
        # Held here, so the service's read of the host by id is answered by the session.
        host = fastpath.authenticate(session, settings, authorization)
        result = service.heartbeat(session, settings, host.id, body.observed,
                                   body.foreign, body.progress, buffer=liveness.HEARTBEATS,
                                   full=body.full)
        assert result.host.last_heartbeat_at is not None
        answer = HeartbeatOut(
            host_id=result.host.id, last_heartbeat_at=result.host.last_heartbeat_at,
            applied=result.applied, ignored=result.ignored,
            heartbeat_interval_seconds=settings.heartbeat_interval_seconds,
            full_report=result.full_report)
    assert answer is not None
    # Committed: the host is up as of this heartbeat (the fast path's rule, api.agent.fastpath).
    fastpath.MEMORY.heard(answer.host_id, answer.last_heartbeat_at,
                          body.progress.passes if body.progress is not None else None)
    return answer


@router.post("/heartbeat", response_model=HeartbeatOut)
async def heartbeat(body: HeartbeatIn, request: Request,
                    authorization: Annotated[str | None, Header()] = None) -> HeartbeatOut:
    """I am alive, and this is what I see.

    The credential check and the heartbeat run in one worker-thread call and one unit of
    work (committed before the answer): every fleet host calls this each interval, and each
    sync dependency would cost a thread hop of its own.
    """
    return await run_in_threadpool(_heartbeat, request.app.state.sessionmaker,
                                   request.app.state.settings, authorization, body)


def _check(maker: SessionFactory, settings: Settings,
           authorization: str | None) -> tuple[str, str, int]:
    """Authenticate and read the cursor in one unit of work: (host id, cursor, wake-ups).

    The host's wake-up count is read before the cursor, so a change committed after the read
    has already bumped it, or will wake the waiter registered with it.
    """
    for session in session_scope(maker):
        host_id = fastpath.authenticate(session, settings, authorization).id
        stamp = notifier.WAITERS.stamp(host_id)
        # A rotated or revoked credential bumps the host's cursor (api.hosts.service), so the
        # wait needs no credential look-up: the poll wakes, and ``_desired`` refuses it.
        current = service.cursor(session, host_id)
        if current is None:
            raise Unauthorized("The host no longer exists.", code="invalid_host_credential")
        fastpath.MEMORY.remember_cursor(host_id, current, stamp)
        return host_id, current, stamp[1]
    raise AssertionError("unreachable")


def _unchanged(maker: SessionFactory, host_id: str, since: str) -> bool:
    """Whether the host's cursor is still ``since`` (one statement)."""
    for session in session_scope(maker):
        return service.cursor(session, host_id) == since
    raise AssertionError("unreachable")


def _desired(maker: SessionFactory, authorization: str | None,
             settings: Settings) -> DesiredOut:
    for session in session_scope(maker):
        host_id = fastpath.authenticate(session, settings, authorization).id
        stamp = notifier.WAITERS.stamp(host_id)  # before the cursor, as in ``_check``
        current, servers = service.desired_servers(session, host_id, settings)
        fastpath.MEMORY.remember_cursor(host_id, current, stamp)
        return DesiredOut(cursor=current, servers=servers)
    raise AssertionError("unreachable")


@router.get("/servers", response_model=DesiredOut, responses={
    304: {"description": "Not Modified: the wait ended and the cursor is still ``since``."}})
async def desired_servers(
    request: Request,
    since: Annotated[str | None, Query(max_length=64)] = None,
    wait: Annotated[float, Query(ge=0, le=30)] = 0,
    authorization: Annotated[str | None, Header()] = None,
) -> DesiredOut | Response:
    """Desired state of every server on this host; long-polls while ``since`` is current.

    With ``since`` equal to the current cursor the answer waits up to ``wait`` seconds for a
    change. The wait is pushed, not polled (``api.agent.notifier``): the poll waits on an
    asyncio event that a committed change of the host sets, holding no thread and no
    database connection and running no SQL meanwhile. A wait that ends without a wake-up
    reads the cursor again (one statement): still ``since``, the answer is ``304 Not
    Modified`` (nothing changed); else, or after a wake-up, the full answer. So a missed
    wake-up costs at most one wait.
    """
    settings: Settings = request.app.state.settings
    maker: SessionFactory = request.app.state.sessionmaker
    timeout = min(wait, settings.agent_long_poll_max_seconds)
    if since is not None and timeout > 0:
        host_id, current, seen = await run_in_threadpool(_check, maker, settings, authorization)
        if current == since:
            waiter = notifier.WAITERS.register(host_id, seen)
            try:
                how = await waiting_long_poll(
                    fastpath.wait_for_change(request.receive, [], waiter, timeout))
            finally:
                notifier.WAITERS.unregister(host_id, waiter)
            observe_long_poll_end(how)
            if how == "timeout" and await run_in_threadpool(_unchanged, maker, host_id, since):
                return Response(status_code=304)
    return await run_in_threadpool(_desired, maker, authorization, settings)


@router.post("/servers/{server_id}/observations", response_model=ObservationOut)
def observe(server_id: PathId, body: ObservationIn, host: CurrentHost, session: SessionDep,
            settings: SettingsDep) -> ObservationOut:
    """Report what the agent saw happen to one of its servers (idempotent per key)."""
    server, applied = service.observe(session, settings, host.host_id, server_id, body)
    return ObservationOut(server_id=server.id, status=server.status,
                          task_state=server.task_state, power_state=server.power_state,
                          applied=applied)


def _own_live_server(session: SessionDep, host_id: str, server_id: str) -> None:
    server = service.get_live_server(session, server_id)
    if server.host_id != host_id:
        raise NotFound("No such server.", code="server_not_found")


@router.put("/servers/{server_id}/console", status_code=204)
async def put_console(server_id: PathId, request: Request, host: CurrentHost,
                      session: SessionDep, settings: SettingsDep) -> None:
    """Replace the stored tail of the server's serial console (text/plain body).

    Only the last ``console_max_bytes`` are kept, also while reading, so a huge body costs
    bounded memory.
    """
    service.console_path(settings, server_id)  # 404 for a non-UUID before any reading
    await run_in_threadpool(_own_live_server, session, host.host_id, server_id)
    limit = settings.console_max_bytes
    tail = bytearray()
    async for chunk in request.stream():
        tail += chunk
        if len(tail) > 2 * limit:
            del tail[:-limit]
    await run_in_threadpool(service.write_console, settings, server_id, bytes(tail))


@console_router.get("/servers/{server_id}/console", response_model=ConsoleOut)
def get_console(server_id: PathId, principal: CurrentUser, session: SessionDep,
                settings: SettingsDep,
                lines: Annotated[int | None, Query(ge=0, le=100_000)] = None) -> ConsoleOut:
    """The tail of the server's serial console (own project; admins any)."""
    server = service.get_live_server(session, server_id)
    if not principal.sees_project(server.project_id):
        raise NotFound("No such server.", code="server_not_found")
    return ConsoleOut(output=service.read_console(settings, server.id, lines))
