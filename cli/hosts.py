"""Compute hosts and availability zones (admin)."""

from __future__ import annotations

import time
from typing import Annotated, Any

import typer

from cli import render
from cli.client import ApiClient, CliError
from cli.context import State, is_uuid, items_of, pick, state

app = typer.Typer(help="Compute hosts (admin).", no_args_is_help=True)
az_app = typer.Typer(help="Availability zones.", no_args_is_help=True)
credential_app = typer.Typer(help="A host agent's credential (admin).", no_args_is_help=True)
app.add_typer(credential_app, name="credential")

HOST_COLUMNS = ["id", "name", "availability_zone", "state", "enabled", "disabled_reason",
                "VCPU", "MEMORY_MB", "DISK_GB", "servers", "last_heartbeat_at"]


def _with_capacity(host: dict[str, Any]) -> dict[str, Any]:
    """Add one ``allocated/capacity`` column per resource class for the table."""
    row = dict(host)
    for rc, r in (host.get("resources") or {}).items():
        if isinstance(r, dict):
            row[rc] = f"{r.get('allocated')}/{r.get('capacity')}"
    return row


def resolve_host(api: ApiClient, ref: str) -> dict[str, Any]:
    """A host by id or name; raises CliError when none or several match."""
    if is_uuid(ref):
        body: dict[str, Any] = api.get(f"/v1/hosts/{ref}")
        return body
    return pick(items_of(api.get_all("/v1/hosts"), "hosts"), ref, "host")


@app.command("list")
def host_list(ctx: typer.Context) -> None:
    """Every compute host with its state and capacity."""
    st = state(ctx)
    hosts = items_of(st.api.get_all("/v1/hosts"), "hosts")
    st.show(hosts if st.json else [_with_capacity(h) for h in hosts], HOST_COLUMNS)


@app.command("show")
def host_show(ctx: typer.Context, host: str) -> None:
    """One host, by name or id."""
    st = state(ctx)
    st.show(resolve_host(st.api, host))


@app.command("enable")
def host_enable(ctx: typer.Context, host: str) -> None:
    """Let the scheduler place new servers on HOST."""
    st = state(ctx)
    h = resolve_host(st.api, host)
    st.show(st.api.patch(f"/v1/hosts/{h['id']}", {"enabled": True, "disabled_reason": None}))


@app.command("disable")
def host_disable(ctx: typer.Context, host: str,
                 reason: Annotated[str | None, typer.Option(help="Why (shown to admins).")
                                   ] = None) -> None:
    """Keep new servers off HOST (its servers keep running)."""
    st = state(ctx)
    h = resolve_host(st.api, host)
    st.show(st.api.patch(f"/v1/hosts/{h['id']}", {"enabled": False, "disabled_reason": reason}))


DRAIN_COLUMNS = ["server_id", "code", "reason"]


@app.command("drain")
def host_drain(
    ctx: typer.Context, host: str,
    wait: Annotated[bool, typer.Option("--wait", help="Follow until no move is in flight.")
                    ] = False,
    cancel: Annotated[bool, typer.Option("--cancel", help="End the drain: the host takes "
                                         "placements again.")] = False,
    timeout: Annotated[float, typer.Option(help="Give up waiting after this many seconds.")
                       ] = 3600.0,
) -> None:
    """Move every server off HOST (no new placements there); then `host delete` it."""
    st = state(ctx)
    h = resolve_host(st.api, host)
    path = f"/v1/hosts/{h['id']}/drain"
    view: dict[str, Any] = st.api.delete(path) if cancel else st.api.post(path, {})
    deadline = time.monotonic() + timeout
    if wait and not cancel:
        spinner = render.console(stderr=True).status("draining", spinner="dots")
        with spinner:
            while view.get("moving"):
                spinner.update(f"{h['name']}: {len(view['moving'])} moving, "
                               f"{view.get('completed', 0)} moved, "
                               f"{view.get('servers_left')} left")
                if time.monotonic() > deadline:
                    raise CliError(f"Gave up after {timeout:.0f}s; still "
                                   f"{len(view['moving'])} moving.", code="wait_timeout")
                time.sleep(1.0)
                view = st.api.get(path)
    if st.json:
        st.show(view)
        return
    render.message(f"Host {h['name']}: {view.get('state') or 'not draining'}, "
                   f"{view.get('servers_left')} server(s) left, {len(view.get('moving', []))} "
                   f"moving, {view.get('completed', 0)} moved.")
    if view.get("refused"):
        st.show(view["refused"], DRAIN_COLUMNS, title="Cannot move")


@app.command("delete")
def host_delete(ctx: typer.Context, host: str) -> None:
    """Remove a host record (it must hold no servers)."""
    st = state(ctx)
    h = resolve_host(st.api, host)
    st.api.delete(f"/v1/hosts/{h['id']}")
    st.done(f"Deleted host {h['name']} ({h['id']}).", {"id": h["id"], "deleted": True})


EVACUATION_COLUMNS = ["server_id", "name", "result", "status", "target_host", "detail"]


def _follow_evacuation(st: State, host: dict[str, Any], timeout: float,
                       interval: float = 1.0) -> dict[str, Any]:
    """Poll the host's evacuation, showing its counts, until no server is still rebuilding.

    Returns the last progress. Raises CliError on timeout.
    """
    deadline = time.monotonic() + timeout
    spinner = render.console(stderr=True).status("evacuating", spinner="dots")
    with spinner:
        while True:
            progress: dict[str, Any] = st.api.get(f"/v1/hosts/{host['id']}/evacuation")
            spinner.update(f"{host['name']}: {progress['rebuilding']} rebuilding, "
                           f"{progress['done']} done, {progress['failed']} failed, "
                           f"{progress['refused']} refused")
            if progress["rebuilding"] == 0:
                return progress
            if time.monotonic() > deadline:
                raise CliError(f"Gave up after {timeout:.0f}s; {progress['rebuilding']} "
                               "server(s) still rebuilding.", code="wait_timeout")
            time.sleep(interval)


@app.command("evacuate")
def host_evacuate(
    ctx: typer.Context, host: str,
    wait: Annotated[bool, typer.Option("--wait", help="Follow until every server settled.")
                    ] = False,
    timeout: Annotated[float, typer.Option(help="Give up waiting after this many seconds.")
                       ] = 1800.0,
) -> None:
    """Rebuild every server of a DOWN host on other hosts, from their images.

    Their local disk content is lost. A server no host can take stays, with the reason;
    evacuating again retries it. When the host comes back, its agent destroys the old copies
    before anything else.
    """
    st = state(ctx)
    h = resolve_host(st.api, host)
    body: dict[str, Any] = st.api.post(f"/v1/hosts/{h['id']}/evacuate")
    rows: list[dict[str, Any]] = list(body["servers"])
    progress = _follow_evacuation(st, h, timeout) if wait else None
    if wait:
        for row in rows:
            if row["result"] == "rebuilding":
                row["status"] = st.api.get(f"/v1/servers/{row['server_id']}")["status"]
    if st.json:
        st.show({**body, "servers": rows, "progress": progress})
    else:
        st.show(rows, EVACUATION_COLUMNS)
    refused = [r for r in rows if r["result"] == "refused"]
    failed = [r for r in rows if r["result"] == "rebuilding" and r["status"] == "ERROR"]
    if refused or failed:
        raise CliError(f"{len(refused)} server(s) stay on {h['name']} and {len(failed)} "
                       "failed to rebuild; evacuate again to retry the ones that stayed.",
                       code="evacuation_incomplete")


@app.command("enroll-token")
def host_enroll_token(ctx: typer.Context) -> None:
    """Create a single-use, expiring token for 'minicloud-agent --enroll TOKEN'."""
    st = state(ctx)
    body: dict[str, Any] = st.api.post("/v1/hosts/enrollment-tokens")
    if st.json:
        st.show(body)
        return
    typer.echo(body["token"])
    typer.echo(f"(single use, expires {body.get('expires_at')}); on the new host run:\n"
               f"  minicloud-agent --api {st.api.url} --enroll {body['token']}", err=True)


@credential_app.command("rotate")
def host_credential_rotate(ctx: typer.Context, host: str) -> None:
    """Give HOST a new credential, shown once; the old one stops working at once."""
    st = state(ctx)
    h = resolve_host(st.api, host)
    body: dict[str, Any] = st.api.post(f"/v1/hosts/{h['id']}/credential")
    if st.json:
        st.show(body)
        return
    typer.echo(body["credential"])
    typer.echo("(shown only once) on the host, store it as the agent's credential and restart "
               "the agent: see docs/operations.md, 'Host credentials'.", err=True)


@credential_app.command("revoke")
def host_credential_revoke(ctx: typer.Context, host: str) -> None:
    """Refuse HOST's agent at once (its servers stay); 'rotate' issues a new credential."""
    st = state(ctx)
    h = resolve_host(st.api, host)
    st.api.delete(f"/v1/hosts/{h['id']}/credential")
    st.done(f"Revoked the credential of host {h['name']} ({h['id']}).",
            {"id": h["id"], "revoked": True})


@az_app.command("list")
def az_list(ctx: typer.Context) -> None:
    """Availability zones."""
    st = state(ctx)
    body = st.api.get("/v1/availability-zones")
    rows = items_of(body, "availability_zones")
    if isinstance(body, list) and body and isinstance(body[0], str):
        rows = [{"name": z} for z in body]
    st.show(rows if not st.json else body, ["name", "hosts"])
