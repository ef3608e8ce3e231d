"""Scaling groups: servers kept at a desired count, by hand, by CPU load or on a schedule."""

from __future__ import annotations

import time
from pathlib import Path
from typing import Annotated, Any

import typer

from cli import render
from cli.client import ApiClient, ApiError, CliError
from cli.context import State, is_uuid, pick, state

app = typer.Typer(help="Scaling groups (docs/scaling.md).", no_args_is_help=True)

GROUP_COLUMNS = ["id", "name", "status", "min_size", "desired", "max_size", "members"]
MEMBER_COLUMNS = ["seq", "name", "server_id", "status", "protected", "created_at"]
ACTIVITY_COLUMNS = ["created_at", "kind", "rule", "result", "from_desired", "to_desired",
                    "cause", "created", "deleted"]

Wait = Annotated[bool, typer.Option("--wait", help="Follow the group until every member is "
                                    "ACTIVE and their count is the desired one.")]
Timeout = Annotated[float, typer.Option(help="Give up waiting after this many seconds.")]
Min = Annotated[int | None, typer.Option("--min", help="min_size.")]
Max = Annotated[int | None, typer.Option("--max", help="max_size.")]
Desired = Annotated[int | None, typer.Option("--desired", help="desired (manual scaling).")]
TargetCpu = Annotated[float | None, typer.Option(
    "--target-cpu", help="Target tracking: keep the members' average cpu_util at this %.")]
Schedules = Annotated[list[str] | None, typer.Option(
    "--schedule", help="A scheduled action 'NAME|CRON (UTC)|min=1,max=4,desired=2' "
                       "(repeatable; replaces the group's schedules).")]
ScaleIn = Annotated[str | None, typer.Option(
    "--scale-in", help="Scale-in policy: oldest_first or newest_first.")]


def resolve_group(api: ApiClient, ref: str) -> dict[str, Any]:
    """A scaling group by id or name; raises CliError when none or several match."""
    if is_uuid(ref):
        body: dict[str, Any] = api.get(f"/v1/scaling-groups/{ref}")
        return body
    return pick(api.get_all("/v1/scaling-groups", items="scaling_groups"), ref,
                "scaling group")


def parse_schedule(text: str) -> dict[str, Any]:
    """``NAME|CRON|min=1,max=4,desired=2`` as a scheduled action; raises CliError."""
    parts = text.split("|")
    if len(parts) != 3:
        raise CliError(f"--schedule must look like 'night|0 20 * * *|min=1', not {text!r}.",
                       code="usage")
    action: dict[str, Any] = {"name": parts[0].strip(), "cron": parts[1].strip()}
    for item in parts[2].split(","):
        key, _, value = item.partition("=")
        field = {"min": "min_size", "max": "max_size", "desired": "desired"}.get(key.strip())
        if field is None or not value.strip().isdigit():
            raise CliError(f"--schedule sizes are min=N, max=N, desired=N; not {item!r}.",
                           code="usage")
        action[field] = int(value)
    return action


def _summary(group: dict[str, Any]) -> dict[str, Any]:
    return group | {"members": len(group.get("members") or [])}


def wait_settled(st: State, group_id: str, *, until_gone: bool = False,
                 timeout: float = 600.0, interval: float = 1.0) -> dict[str, Any] | None:
    """Poll the group, showing its progress, until its members are all ACTIVE and as many as
    desired (or, ``until_gone``, until it is deleted). Raises CliError on timeout."""
    deadline = time.monotonic() + timeout
    spinner = render.console(stderr=True).status("waiting", spinner="dots")
    with spinner:
        while True:
            try:
                group: dict[str, Any] = st.api.get(f"/v1/scaling-groups/{group_id}")
            except ApiError as exc:
                if until_gone and exc.status == 404:
                    return None
                raise
            members = group.get("members") or []
            active = sum(1 for m in members if m.get("status") == "ACTIVE")
            spinner.update(f"{group['name']}: {active} of desired {group['desired']} "
                           f"ACTIVE, {len(members)} member(s)")
            if not until_gone and active == len(members) == group["desired"]:
                return group
            if time.monotonic() > deadline:
                raise CliError(f"Gave up after {timeout:.0f}s: {active} of desired "
                               f"{group['desired']} members ACTIVE (see `minicloud group "
                               f"activities {group['name']}`).", code="wait_timeout")
            time.sleep(interval)


def _show(st: State, group: dict[str, Any]) -> None:
    if st.json:
        render.emit_json(group)
        return
    members = group.get("members") or []
    render.record({k: v for k, v in _summary(group).items()}, title=f"group {group['name']}")
    if members:
        render.table(members, MEMBER_COLUMNS, title="members")


@app.command("create")
def group_create(
    ctx: typer.Context,
    name: str,
    flavor: Annotated[str, typer.Option(help="Flavor name or id.")],
    image: Annotated[str, typer.Option(help="Image name or id.")],
    max_size: Annotated[int, typer.Option("--max", help="max_size.")],
    min_size: Annotated[int, typer.Option("--min", help="min_size.")] = 0,
    desired: Desired = None,
    user_data: Annotated[Path | None, typer.Option(help="cloud-init user-data file.")] = None,
    key: Annotated[Path | None, typer.Option(help="SSH public key file.")] = None,
    key_name: Annotated[str | None, typer.Option(help="One of your key pairs.")] = None,
    az: Annotated[str | None, typer.Option("--az", help="Availability zone.")] = None,
    spread: Annotated[bool, typer.Option(help="Spread members over hosts (soft "
                                         "anti-affinity).")] = True,
    target_cpu: TargetCpu = None,
    schedule: Schedules = None,
    scale_in: ScaleIn = None,
    wait: Wait = False,
    timeout: Timeout = 600.0,
) -> None:
    """Create a scaling group (with --wait: until its members are ACTIVE)."""
    st = state(ctx)
    launch: dict[str, Any] = {"flavor": flavor, "image": image, "anti_affinity": spread}
    for field, path in (("user_data", user_data), ("key_data", key)):
        if path is not None:
            try:
                launch[field] = path.read_text().strip() if field == "key_data" \
                    else path.read_text()
            except (OSError, UnicodeDecodeError) as exc:
                raise CliError(f"Cannot read {path}: {exc}", code="bad_file") from None
    if key_name is not None:
        launch["key_name"] = key_name
    if az is not None:
        launch["availability_zone"] = az
    body: dict[str, Any] = {"name": name, "launch": launch, "min_size": min_size,
                            "max_size": max_size}
    if desired is not None:
        body["desired"] = desired
    if target_cpu is not None:
        body["policy"] = {"metric": "cpu_util", "target": target_cpu}
    if schedule:
        body["scheduled_actions"] = [parse_schedule(s) for s in schedule]
    if scale_in is not None:
        body["scale_in_policy"] = scale_in
    group: dict[str, Any] = st.api.post("/v1/scaling-groups", body)
    if wait:
        group = wait_settled(st, group["id"], timeout=timeout) or group
    _show(st, group)


@app.command("list")
def group_list(ctx: typer.Context) -> None:
    """Your project's scaling groups."""
    st = state(ctx)
    groups = st.api.get_all("/v1/scaling-groups", items="scaling_groups")
    if st.json:
        render.emit_json(groups)
        return
    st.show([_summary(g) for g in groups], GROUP_COLUMNS)


@app.command("show")
def group_show(ctx: typer.Context, group: str) -> None:
    """One scaling group and its members, by name or id."""
    st = state(ctx)
    _show(st, resolve_group(st.api, group))


@app.command("set")
def group_set(
    ctx: typer.Context,
    group: str,
    min_size: Min = None,
    max_size: Max = None,
    desired: Desired = None,
    target_cpu: TargetCpu = None,
    no_policy: Annotated[bool, typer.Option("--no-policy",
                                            help="Remove the target tracking policy.")] = False,
    schedule: Schedules = None,
    no_schedules: Annotated[bool, typer.Option("--no-schedules",
                                               help="Remove every scheduled action.")] = False,
    scale_in: ScaleIn = None,
    wait: Wait = False,
    timeout: Timeout = 600.0,
) -> None:
    """Change a group's sizes, policy, schedules or scale-in policy (with --wait: until the
    members follow)."""
    st = state(ctx)
    g = resolve_group(st.api, group)
    body: dict[str, Any] = {k: v for k, v in (("min_size", min_size), ("max_size", max_size),
                                              ("desired", desired),
                                              ("scale_in_policy", scale_in)) if v is not None}
    if target_cpu is not None:
        body["policy"] = {"metric": "cpu_util", "target": target_cpu}
    elif no_policy:
        body["policy"] = None
    if schedule:
        body["scheduled_actions"] = [parse_schedule(s) for s in schedule]
    elif no_schedules:
        body["scheduled_actions"] = []
    if not body:
        raise CliError("Nothing to change: give --min, --max, --desired, --target-cpu, "
                       "--schedule or --scale-in.", code="usage")
    updated: dict[str, Any] = st.api.patch(f"/v1/scaling-groups/{g['id']}", body)
    if wait:
        updated = wait_settled(st, g["id"], timeout=timeout) or updated
    _show(st, updated)


@app.command("protect")
def group_protect(
    ctx: typer.Context, group: str, server: str,
    off: Annotated[bool, typer.Option("--off", help="Lift the protection.")] = False,
) -> None:
    """Protect a member (by name or server id) from scale-in, or lift it with --off."""
    st = state(ctx)
    g = resolve_group(st.api, group)
    member = pick([m | {"id": m["server_id"]} for m in g.get("members") or []], server,
                  "member")
    answer = st.api.patch(f"/v1/scaling-groups/{g['id']}/members/{member['server_id']}",
                          {"protected": not off})
    st.done(f"Member {member['name']} is {'no longer ' if off else ''}protected from "
            "scale-in.", answer)


@app.command("delete")
def group_delete(ctx: typer.Context, group: str, wait: Wait = False,
                 timeout: Timeout = 600.0) -> None:
    """Delete a group and its members (with --wait: until it is gone)."""
    st = state(ctx)
    g = resolve_group(st.api, group)
    st.api.delete(f"/v1/scaling-groups/{g['id']}")
    if wait:
        wait_settled(st, g["id"], until_gone=True, timeout=timeout)
        st.done(f"Deleted scaling group {g['name']} and its members.",
                {"id": g["id"], "deleted": True})
    else:
        st.done(f"Deleting scaling group {g['name']} and its members.",
                {"id": g["id"], "deleting": True})


@app.command("activities")
def group_activities(
    ctx: typer.Context, group: str,
    limit: Annotated[int, typer.Option(help="How many, newest first.")] = 50,
) -> None:
    """What the group decided and did: why (rule, metric values), what (server ids), and
    the refusals of failed launches."""
    st = state(ctx)
    g = resolve_group(st.api, group)
    body = st.api.get(f"/v1/scaling-groups/{g['id']}/activities", limit=limit)
    rows = body.get("activities", []) if isinstance(body, dict) else []
    if st.json:
        render.emit_json(rows)
        return
    st.show(rows, ACTIVITY_COLUMNS, title=f"activities of {g['name']}")
