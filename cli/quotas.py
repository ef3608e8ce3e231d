"""Quotas: how much a project may hold, and how much it holds now."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cli.client import CliError
from cli.context import state
from cli.identity import resolve_project

app = typer.Typer(help="Project quotas.", no_args_is_help=True)

RESOURCES = ("instances", "vcpus", "ram_mb", "disk_gb", "images", "image_bytes")


@app.command("show")
def quota_show(ctx: typer.Context, project: Annotated[str | None, typer.Argument(
        help="Project name or id (default: yours).")] = None) -> None:
    """Limits and current usage of a project."""
    st = state(ctx)
    if project is None:
        p = st.api.get("/v1/auth/tokens/current")["project"]
    else:
        p = resolve_project(st.api, project)
    pid, pname = p["id"], p["name"]
    q: dict[str, Any] = st.api.get(f"/v1/quotas/{pid}")
    if st.json:
        st.show(q)
        return
    limits, usage = q.get("limits", {}), q.get("usage", {})
    rows = [{"resource": r, "used": usage.get(r), "limit": limits.get(r)}
            for r in dict.fromkeys([*RESOURCES, *limits])]
    st.show(rows, ["resource", "used", "limit"], title=f"quota of {pname}")


@app.command("set")
def quota_set(
    ctx: typer.Context,
    project: str,
    instances: Annotated[int | None, typer.Option(help="Servers.")] = None,
    vcpus: Annotated[int | None, typer.Option(help="Virtual CPUs.")] = None,
    ram_mb: Annotated[int | None, typer.Option("--ram-mb", help="Memory in MiB.")] = None,
    disk_gb: Annotated[int | None, typer.Option("--disk-gb", help="Disk in GiB.")] = None,
    images: Annotated[int | None, typer.Option(help="Images.")] = None,
    image_bytes: Annotated[int | None, typer.Option(
        "--image-bytes", help="Bytes of all images together.")] = None,
) -> None:
    """Change some of a project's limits (admin)."""
    st = state(ctx)
    given = {"instances": instances, "vcpus": vcpus, "ram_mb": ram_mb, "disk_gb": disk_gb,
             "images": images, "image_bytes": image_bytes}
    body = {k: v for k, v in given.items() if v is not None}
    if not body:
        raise CliError("Give at least one of --instances, --vcpus, --ram-mb, --disk-gb, "
                       "--images, --image-bytes.", code="usage")
    pid = resolve_project(st.api, project)["id"]
    st.show(st.api.put(f"/v1/quotas/{pid}", body))
