"""Migration HTTP routes: a server's migrations, and the agents' file relay."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Header, Request
from fastapi.concurrency import run_in_threadpool
from fastapi.responses import FileResponse

from api.agent.schemas import MigrationProgressIn, MigrationProgressOut
from api.deps import AdminUser, CurrentHost, CurrentUser, SessionDep, SettingsDep, Writer
from api.errors import NotFound
from api.fields import PathId
from api.mobility import drain, relay, service
from api.mobility.schemas import DrainOut, MigrationList, MigrationOut, RefusalOut
from api.models import Migration
from api.servers import service as servers
from api.servers.schemas import Fault

router = APIRouter(prefix="/v1", tags=["servers"])
agent_router = APIRouter(prefix="/v1/agent", tags=["agent"])

Sha256 = Annotated[str, Header(alias="X-Content-Sha256", pattern=r"^[0-9a-fA-F]{64}$")]


def _out(m: Migration, admin: bool) -> MigrationOut:
    return MigrationOut(
        id=m.id, server_id=m.server_id, kind=m.kind, status=m.status,
        source_host_id=m.source_host_id if admin else None,
        dest_host_id=m.dest_host_id if admin else None, progress=m.progress,
        data_remaining=m.data_remaining,
        fault=Fault(code=m.fault_code, message=m.fault_message or "") if m.fault_code else None,
        created_at=m.created_at, updated_at=m.updated_at, finished_at=m.finished_at)


@router.get("/servers/{server_id}/migrations", response_model=MigrationList)
def server_migrations(server_id: PathId, principal: CurrentUser,
                      session: SessionDep) -> MigrationList:
    """The server's migrations, newest first (`status`: preparing, migrating, completed,
    reverted with its `fault`, failed, aborted); host ids only for admins."""
    server = servers.get_server(session, principal, server_id)
    return MigrationList(migrations=[_out(m, principal.is_admin)
                                     for m in service.visible_migrations(session, principal,
                                                                         server)])


@router.post("/servers/{server_id}/migration/abort", response_model=MigrationOut)
def abort_migration(server_id: PathId, principal: Writer, session: SessionDep,
                    settings: SettingsDep) -> MigrationOut:
    """Abort the server's live migration (whoever may migrate the server): reverted at once
    while the destination prepares; while the source copies, its agent aborts the copy and
    the guest keeps running on the source. 409 `migration_not_abortable` otherwise."""
    server = servers.get_server(session, principal, server_id)
    return _out(service.abort(session, settings, principal, server), principal.is_admin)


@agent_router.post("/servers/{server_id}/migration-progress",
                   response_model=MigrationProgressOut)
def migration_progress(server_id: PathId, body: MigrationProgressIn, host: CurrentHost,
                       session: SessionDep) -> MigrationProgressOut:
    """The source host's reading of a live migration's copy (data remaining); 404
    `migration_not_found` once the move is not in its copy step from this host."""
    m = service.record_progress(session, host.host_id, server_id, data_total=body.data_total,
                                data_processed=body.data_processed,
                                data_remaining=body.data_remaining)
    return MigrationProgressOut(migration_id=m.id, progress=m.progress,
                                abort=m.fault_code == service.ABORTED_CODE)


@agent_router.put("/servers/{server_id}/migration/{migration_file}", status_code=204)
async def upload_migration_file(server_id: PathId, migration_file: relay.FileName, request: Request,
                                host: CurrentHost, session: SessionDep, settings: SettingsDep,
                                sha256: Sha256) -> None:
    """The source host sends one file of the server's cold migration (its disk overlay or its
    seed) with its sha256; 404 `migration_not_found` for any other host or step, 400
    `migration_file_checksum` when the bytes do not match."""
    migration = await run_in_threadpool(service.relay_migration, session, host.host_id,
                                        server_id, upload=True)
    await relay.receive(settings, migration.id, migration_file, request.stream(), sha256)


@agent_router.get("/servers/{server_id}/migration/{migration_file}", response_class=FileResponse,
                  responses={200: {"content": {"application/octet-stream": {
                      "schema": {"type": "string", "format": "binary"}}}}})
def download_migration_file(server_id: PathId, migration_file: relay.FileName, host: CurrentHost,
                            session: SessionDep, settings: SettingsDep) -> FileResponse:
    """The destination host fetches one relayed file (`X-Content-Sha256` carries its digest);
    404 `migration_not_found` for any other host or step."""
    migration = service.relay_migration(session, host.host_id, server_id, upload=False)
    digest = relay.digest_of(settings, migration.id, migration_file)
    if digest is None:
        raise NotFound("The source has not sent this file.", code="migration_not_found")
    return FileResponse(relay.path(settings, migration.id, migration_file),
                        media_type="application/octet-stream",
                        headers={"X-Content-Sha256": digest})


def _drain_out(v: drain.DrainView) -> DrainOut:
    return DrainOut(host_id=v.host_id, state=v.state, servers_left=v.servers_left,
                    moving=v.moving, completed=v.completed,
                    refused=[RefusalOut(server_id=r.server_id, code=r.code, reason=r.reason)
                             for r in v.refused])


@router.post("/hosts/{host_id}/drain", status_code=202, response_model=DrainOut,
             tags=["hosts"])
def drain_host(host_id: PathId, admin: AdminUser, session: SessionDep,
               settings: SettingsDep) -> DrainOut:
    """Drain a host (admin): no new placements there, and every ACTIVE or SHUTOFF server is
    migrated to a host the placement service picks (ACTIVE ones live when this host and
    another registered a migration endpoint, otherwise cold). Servers that cannot move are listed
    in `refused` with the scheduler's explained refusal; posting again retries them. Once
    `servers_left` is 0 the state is `drained` and `DELETE /v1/hosts/{id}` decommissions it."""
    return _drain_out(drain.start(session, settings, admin, host_id))


@router.get("/hosts/{host_id}/drain", response_model=DrainOut, tags=["hosts"])
def show_drain(host_id: PathId, _: AdminUser, session: SessionDep) -> DrainOut:
    """A drain's progress (admin): servers left, moving, moved, refused with reasons."""
    return _drain_out(drain.view(session, host_id))


@router.delete("/hosts/{host_id}/drain", response_model=DrainOut, tags=["hosts"])
def cancel_drain(host_id: PathId, _: AdminUser, session: SessionDep) -> DrainOut:
    """End a drain (admin): the host takes placements again; moves in flight go on."""
    return _drain_out(drain.cancel(session, host_id))
