"""Servers (virtual machines) and server groups."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from cli import render
from cli.client import ApiClient, ApiError, CliError
from cli.context import State, is_uuid, items_of, pick, state

app = typer.Typer(help="Servers (virtual machines).", no_args_is_help=True)
group_app = typer.Typer(help="Server groups (affinity / anti-affinity).", no_args_is_help=True)

SERVER_COLUMNS = ["id", "name", "status", "task_state", "power_state", "flavor", "image",
                  "addresses", "host"]
EVENT_COLUMNS = ["created_at", "action", "event", "user_name", "user_id", "result", "status",
                 "message", "request_id"]
GROUP_COLUMNS = ["id", "name", "policy", "members"]
SETTLED = ("ACTIVE", "ERROR", "PAUSED", "SHUTOFF")

Wait = Annotated[bool, typer.Option("--wait", help="Follow the server until it settles.")]
Timeout = Annotated[float, typer.Option(help="Give up waiting after this many seconds.")]


def list_servers(api: ApiClient, **params: Any) -> list[dict[str, Any]]:
    """Every server matching ``params``, following ``next_marker`` through the pages."""
    out: list[dict[str, Any]] = []
    marker: str | None = None
    while True:
        body = api.get("/v1/servers", marker=marker, **params)
        out.extend(items_of(body, "servers"))
        marker = body.get("next_marker") if isinstance(body, dict) else None
        if not marker:
            return out


def resolve_server(api: ApiClient, ref: str) -> dict[str, Any]:
    """A server of your project by id or name; raises CliError when none or several match."""
    if is_uuid(ref):
        body: dict[str, Any] = api.get(f"/v1/servers/{ref}")
        return body
    named = [s for s in list_servers(api, name=ref) if s.get("name") == ref]
    return pick(named, ref, "server")


def resolve_group(api: ApiClient, ref: str) -> dict[str, Any]:
    """A server group by id or name; raises CliError when none or several match."""
    if is_uuid(ref):
        body: dict[str, Any] = api.get(f"/v1/server-groups/{ref}")
        return body
    return pick(api.get_all("/v1/server-groups", items="server_groups"), ref, "server group")


def _read_text(path: Path, what: str) -> str:
    try:
        return path.read_text()
    except (OSError, UnicodeDecodeError) as exc:
        raise CliError(f"Cannot read the {what} file {path}: {exc}", code="bad_file") from None


def wait_for(st: State, server_id: str, *, until_gone: bool = False,
             timeout: float = 600.0, interval: float = 1.0) -> dict[str, Any] | None:
    """Poll the server, showing its status, until it settles (or is gone).

    Returns the last server (None once deleted). Raises CliError on ERROR or timeout.
    """
    deadline = time.monotonic() + timeout
    last: dict[str, Any] | None = None
    spinner = render.console(stderr=True).status("waiting", spinner="dots")
    with spinner:
        while True:
            try:
                last = st.api.get(f"/v1/servers/{server_id}")
            except ApiError as exc:
                if until_gone and exc.status == 404:
                    return None
                raise
            assert last is not None
            task = f" ({last['task_state']})" if last.get("task_state") else ""
            spinner.update(f"{last.get('name')}: {last.get('status')}{task}")
            status = last.get("status")
            if status == "ERROR":
                fault = last.get("fault") or {}
                raise CliError(f"Server {last.get('name')} went to ERROR: "
                               f"{fault.get('message', 'no fault message')}",
                               code=str(fault.get("code") or "server_error"))
            if not until_gone and status in SETTLED and not last.get("task_state"):
                return last
            if time.monotonic() > deadline:
                raise CliError(f"Gave up after {timeout:.0f}s; the server is {status}{task}.",
                               code="wait_timeout")
            time.sleep(interval)


@app.command("create")
def server_create(
    ctx: typer.Context,
    name: str,
    flavor: Annotated[str, typer.Option(help="Flavor name or id.")],
    image: Annotated[str, typer.Option(help="Image name or id.")],
    user_data: Annotated[Path | None, typer.Option(help="cloud-init user-data file.")] = None,
    key: Annotated[Path | None, typer.Option(help="SSH public key file.")] = None,
    key_name: Annotated[str | None, typer.Option(help="One of your key pairs.")] = None,
    group: Annotated[str | None, typer.Option(help="Server group name or id.")] = None,
    az: Annotated[str | None, typer.Option("--az", help="Availability zone.")] = None,
    wait: Wait = False,
    timeout: Timeout = 600.0,
) -> None:
    """Create a server; it starts in BUILD (with --wait: follow it until ACTIVE or ERROR)."""
    st = state(ctx)
    body: dict[str, Any] = {"name": name, "flavor": flavor, "image": image}
    if user_data is not None:
        body["user_data"] = _read_text(user_data, "user-data")
    if key is not None:
        body["key_data"] = _read_text(key, "key").strip()
    if key_name is not None:
        body["key_name"] = key_name
    if group is not None:
        body["server_group"] = resolve_group(st.api, group)["id"]
    if az is not None:
        body["availability_zone"] = az
    server: dict[str, Any] = st.api.post("/v1/servers", body)
    if wait:
        server = wait_for(st, server["id"], timeout=timeout) or server
    st.show(server)


@app.command("list")
def server_list(
    ctx: typer.Context,
    status: Annotated[str | None, typer.Option(help="Only servers in this status.")] = None,
    name: Annotated[str | None, typer.Option(help="Only servers with this name.")] = None,
    host: Annotated[str | None, typer.Option(help="Only servers on this host (admin).")] = None,
    all_projects: Annotated[bool, typer.Option(help="Every project's servers (admin).")] = False,
) -> None:
    """Your project's servers (admins: --all-projects)."""
    st = state(ctx)
    servers = list_servers(st.api, status=status, name=name, host=host,
                           all_projects="true" if all_projects else None)
    columns = (["project_id", *SERVER_COLUMNS] if all_projects else SERVER_COLUMNS)
    st.show(servers, columns)


@app.command("show")
def server_show(ctx: typer.Context, server: str) -> None:
    """One server, by name or id."""
    st = state(ctx)
    st.show(resolve_server(st.api, server))


@app.command("delete")
def server_delete(ctx: typer.Context, server: str, wait: Wait = False,
                  timeout: Timeout = 600.0) -> None:
    """Delete a server (with --wait: until it is gone)."""
    st = state(ctx)
    s = resolve_server(st.api, server)
    st.api.delete(f"/v1/servers/{s['id']}")
    if wait:
        wait_for(st, s["id"], until_gone=True, timeout=timeout)
        st.done(f"Deleted server {s['name']} ({s['id']}).", {"id": s["id"], "deleted": True})
    else:
        st.done(f"Deleting server {s['name']} ({s['id']}).", {"id": s["id"], "deleting": True})


def _action(ctx: typer.Context, server: str, body: dict[str, Any], wait: bool,
            timeout: float) -> None:
    st = state(ctx)
    s = resolve_server(st.api, server)
    answer = st.api.post(f"/v1/servers/{s['id']}/actions", body)
    result = answer if isinstance(answer, dict) and "id" in answer else s
    if wait:
        result = wait_for(st, s["id"], timeout=timeout) or result
        st.show(result)
        return
    st.done(f"{body['action'].capitalize()} of {s['name']} accepted.", result)


@app.command("start")
def server_start(ctx: typer.Context, server: str, wait: Wait = False,
                 timeout: Timeout = 600.0) -> None:
    """Start a stopped server."""
    _action(ctx, server, {"action": "start"}, wait, timeout)


@app.command("stop")
def server_stop(ctx: typer.Context, server: str, wait: Wait = False,
                timeout: Timeout = 600.0) -> None:
    """Stop (power off) a server."""
    _action(ctx, server, {"action": "stop"}, wait, timeout)


@app.command("reboot")
def server_reboot(
    ctx: typer.Context, server: str,
    hard: Annotated[bool, typer.Option("--hard", help="Reset instead of a guest reboot.")] = False,
    wait: Wait = False, timeout: Timeout = 600.0,
) -> None:
    """Reboot a server (soft by default)."""
    _action(ctx, server, {"action": "reboot", "type": "hard" if hard else "soft"}, wait, timeout)


@app.command("pause")
def server_pause(ctx: typer.Context, server: str, wait: Wait = False,
                 timeout: Timeout = 600.0) -> None:
    """Pause a running server: its vCPUs stop, its memory stays (billed: RAM and disk)."""
    _action(ctx, server, {"action": "pause"}, wait, timeout)


@app.command("unpause")
def server_unpause(ctx: typer.Context, server: str, wait: Wait = False,
                   timeout: Timeout = 600.0) -> None:
    """Let a paused server run again, where it stopped (same boot)."""
    _action(ctx, server, {"action": "unpause"}, wait, timeout)


@app.command("resize")
def server_resize(ctx: typer.Context, server: str,
                  flavor: Annotated[str, typer.Option(help="New flavor name or id.")],
                  wait: Wait = False, timeout: Timeout = 600.0) -> None:
    """Give a stopped server another flavor."""
    _action(ctx, server, {"action": "resize", "flavor": flavor}, wait, timeout)


def wait_migration(st: State, server_id: str, *, timeout: float = 3600.0,
                   interval: float = 1.0) -> dict[str, Any]:
    """Follow the server's newest migration, showing its step and progress, until it ended
    and the server settled. Returns the migration; raises CliError when it did not complete
    (the fault says why) or on timeout."""
    deadline = time.monotonic() + timeout
    spinner = render.console(stderr=True).status("migrating", spinner="dots")
    with spinner:
        while True:
            found = st.api.get(f"/v1/servers/{server_id}/migrations").get("migrations") or []
            server = st.api.get(f"/v1/servers/{server_id}")
            migration: dict[str, Any] = found[0] if found else {}
            task = f" ({server['task_state']})" if server.get("task_state") else ""
            remaining = migration.get("data_remaining")
            left = (f", {remaining / 2**20:.1f} MiB left" if isinstance(remaining, int)
                    and migration.get("status") == "migrating" else "")
            spinner.update(f"{server.get('name')}: {server.get('status')}{task}, "
                           f"{migration.get('kind', '')} migration {migration.get('status')} "
                           f"{migration.get('progress', 0)}%{left}")
            ended = migration.get("status") not in ("queued", "preparing", "migrating")
            if ended and server.get("status") in SETTLED and not server.get("task_state"):
                if migration.get("status") != "completed":
                    fault = migration.get("fault") or {}
                    raise CliError(f"Migration of {server.get('name')} "
                                   f"{migration.get('status')}: "
                                   f"{fault.get('message', 'no fault message')}",
                                   code=str(fault.get("code") or "migration_failed"))
                return migration
            if time.monotonic() > deadline:
                raise CliError(f"Gave up after {timeout:.0f}s; the migration is "
                               f"{migration.get('status')}.", code="wait_timeout")
            time.sleep(interval)


@app.command("migrate")
def server_migrate(
    ctx: typer.Context, server: str,
    live: Annotated[bool, typer.Option("--live", help="Live migration of an ACTIVE server: "
                                       "it keeps running while memory and disk are "
                                       "copied.")] = False,
    host: Annotated[str | None, typer.Option("--host", help="Destination host (admin); "
                                             "every scheduler filter still applies.")] = None,
    wait: Wait = False, timeout: Timeout = 3600.0,
) -> None:
    """Move a server to another host (cold: an ACTIVE server is stopped, moved and started;
    --live: it keeps running)."""
    st = state(ctx)
    s = resolve_server(st.api, server)
    body: dict[str, Any] = {"action": "migrate"}
    if live:
        body["live"] = True
    if host is not None:
        body["host"] = host
    st.api.post(f"/v1/servers/{s['id']}/actions", body)
    if wait:
        migration = wait_migration(st, s["id"], timeout=timeout)
        st.show(migration)
        return
    st.done(f"Migration of {s['name']} accepted.", {"id": s["id"], "migrating": True})


@app.command("migrate-abort")
def server_migrate_abort(ctx: typer.Context, server: str) -> None:
    """Abort a server's live migration; the guest keeps running on its source."""
    st = state(ctx)
    s = resolve_server(st.api, server)
    migration = st.api.post(f"/v1/servers/{s['id']}/migration/abort", {})
    st.done(f"Live migration of {s['name']} aborting.", migration)


@app.command("events")
def server_events(ctx: typer.Context, server: str) -> None:
    """What happened to a server: requests and state changes, who, when, result."""
    st = state(ctx)
    s = resolve_server(st.api, server)
    events: list[dict[str, Any]] = []
    marker: str | None = None
    while True:  # every page
        body = st.api.get(f"/v1/servers/{s['id']}/events", marker=marker)
        events.extend(items_of(body, "events"))
        marker = body.get("next_marker") if isinstance(body, dict) else None
        if not marker:
            break
    st.show(events, EVENT_COLUMNS)


@app.command("console")
def server_console(ctx: typer.Context, server: str) -> None:
    """The tail of the server's serial console log."""
    st = state(ctx)
    s = resolve_server(st.api, server)
    body = st.api.get(f"/v1/servers/{s['id']}/console")
    if st.json:
        render.emit_json(body)
        return
    if isinstance(body, dict):
        text = next((body[k] for k in ("output", "console", "log", "text")
                     if isinstance(body.get(k), str)), None)
        if text is None:
            render.record(body)
            return
        body = text
    # The console is whatever the guest (that is, the tenant) wrote to its serial port.
    text = render.terminal_safe(str(body))
    typer.echo(text, nl=not text.endswith("\n"))


@group_app.command("list")
def group_list(ctx: typer.Context) -> None:
    """Your project's server groups."""
    st = state(ctx)
    st.show(st.api.get_all("/v1/server-groups", items="server_groups"), GROUP_COLUMNS)


@group_app.command("show")
def group_show(ctx: typer.Context, group: str) -> None:
    """One server group, by name or id."""
    st = state(ctx)
    st.show(resolve_group(st.api, group))


@group_app.command("create")
def group_create(
    ctx: typer.Context, name: str,
    policy: Annotated[str, typer.Option(
        help="affinity, anti-affinity, soft-affinity or soft-anti-affinity.")] = "anti-affinity",
) -> None:
    """Create a server group."""
    st = state(ctx)
    st.show(st.api.post("/v1/server-groups", {"name": name, "policy": policy}))


@group_app.command("delete")
def group_delete(ctx: typer.Context, group: str) -> None:
    """Delete a server group."""
    st = state(ctx)
    g = resolve_group(st.api, group)
    st.api.delete(f"/v1/server-groups/{g['id']}")
    st.done(f"Deleted server group {g['name']} ({g['id']}).", {"id": g["id"], "deleted": True})
