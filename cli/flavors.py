"""Flavors: the sizes a server can have."""

from __future__ import annotations

from typing import Annotated, Any

import typer

from cli.context import items_of, state

app = typer.Typer(help="Flavors (server sizes).", no_args_is_help=True)

FLAVOR_COLUMNS = ["id", "name", "vcpus", "ram_mb", "disk_gb", "is_public", "extra_specs"]


def _key_values(pairs: list[str], what: str) -> dict[str, str]:
    from cli.client import CliError

    out: dict[str, str] = {}
    for p in pairs:
        key, sep, value = p.partition("=")
        if not sep or not key:
            raise CliError(f"{what} must look like KEY=VALUE, not {p!r}.", code="usage")
        out[key] = value
    return out


@app.command("list")
def flavor_list(ctx: typer.Context) -> None:
    """Flavors you may use."""
    st = state(ctx)
    st.show(items_of(st.api.get_all("/v1/flavors"), "flavors"), FLAVOR_COLUMNS)


@app.command("show")
def flavor_show(ctx: typer.Context, flavor: str) -> None:
    """One flavor, by name or id."""
    st = state(ctx)
    st.show(st.api.get(f"/v1/flavors/{flavor}"))


@app.command("create")
def flavor_create(
    ctx: typer.Context,
    name: str,
    vcpus: Annotated[int, typer.Option(help="Virtual CPUs.")],
    ram_mb: Annotated[int, typer.Option("--ram-mb", help="Memory in MiB.")],
    disk_gb: Annotated[int, typer.Option("--disk-gb", help="Root disk in GiB.")],
    private: Annotated[bool, typer.Option(help="Only for projects given access.")] = False,
    spec: Annotated[list[str] | None, typer.Option(
        help="Extra spec KEY=VALUE (repeatable), e.g. aggregate:ssd=true.")] = None,
) -> None:
    """Create a flavor (admin)."""
    st = state(ctx)
    body: dict[str, Any] = {"name": name, "vcpus": vcpus, "ram_mb": ram_mb, "disk_gb": disk_gb,
                            "is_public": not private,
                            "extra_specs": _key_values(spec or [], "--spec")}
    st.show(st.api.post("/v1/flavors", body))


@app.command("delete")
def flavor_delete(ctx: typer.Context, flavor: str) -> None:
    """Delete a flavor (admin)."""
    st = state(ctx)
    f = st.api.get(f"/v1/flavors/{flavor}")
    st.api.delete(f"/v1/flavors/{f['id']}")
    st.done(f"Deleted flavor {f['name']} ({f['id']}).", {"id": f["id"], "deleted": True})


@app.command("grant")
def flavor_grant(ctx: typer.Context, flavor: str, project: str) -> None:
    """Let PROJECT use a private FLAVOR (admin)."""
    from cli.identity import resolve_project

    st = state(ctx)
    f = st.api.get(f"/v1/flavors/{flavor}")
    p = resolve_project(st.api, project)
    st.api.post(f"/v1/flavors/{f['id']}/access/{p['id']}")
    st.done(f"Project {p['name']} may use flavor {f['name']}.",
            {"flavor_id": f["id"], "project_id": p["id"], "granted": True})


@app.command("revoke")
def flavor_revoke(ctx: typer.Context, flavor: str, project: str) -> None:
    """Take PROJECT's access to a private FLAVOR away (admin)."""
    from cli.identity import resolve_project

    st = state(ctx)
    f = st.api.get(f"/v1/flavors/{flavor}")
    p = resolve_project(st.api, project)
    st.api.delete(f"/v1/flavors/{f['id']}/access/{p['id']}")
    st.done(f"Project {p['name']} may no longer use flavor {f['name']}.",
            {"flavor_id": f["id"], "project_id": p["id"], "revoked": True})
