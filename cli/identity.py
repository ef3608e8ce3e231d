"""Projects, users, role assignments and application credentials."""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from cli.client import ApiClient, CliError
from cli.context import is_uuid, items_of, pick, state

project_app = typer.Typer(help="Projects (tenants).", no_args_is_help=True)
user_app = typer.Typer(help="Users (admin).", no_args_is_help=True)
member_app = typer.Typer(help="Who holds which role on a project (admin).",
                         no_args_is_help=True)
credential_app = typer.Typer(help="Application credentials for automation.",
                             no_args_is_help=True)
password_app = typer.Typer(help="Your own password.", no_args_is_help=True)

PROJECT_COLUMNS = ["id", "name", "description", "created_at"]
USER_COLUMNS = ["id", "name", "enabled", "created_at"]
MEMBER_COLUMNS = ["user_name", "user_id", "project_id", "role"]
CREDENTIAL_COLUMNS = ["id", "name", "project_id", "expires_at", "created_at"]


def resolve_project(api: ApiClient, ref: str) -> dict[str, Any]:
    """A project by id or name; raises CliError when none or several match."""
    if is_uuid(ref):
        body: dict[str, Any] = api.get(f"/v1/projects/{ref}")
        return body
    return pick(items_of(api.get_all("/v1/projects"), "projects"), ref, "project")


def resolve_user(api: ApiClient, ref: str) -> dict[str, Any]:
    """A user by id or name (admin); raises CliError when none or several match."""
    if is_uuid(ref):
        body: dict[str, Any] = api.get(f"/v1/users/{ref}")
        return body
    return pick(items_of(api.get_all("/v1/users"), "users"), ref, "user")


@project_app.command("list")
def project_list(ctx: typer.Context) -> None:
    """Projects you can see (admins: all)."""
    st = state(ctx)
    st.show(items_of(st.api.get_all("/v1/projects"), "projects"), PROJECT_COLUMNS)


@project_app.command("show")
def project_show(ctx: typer.Context, project: str) -> None:
    """One project, by name or id."""
    st = state(ctx)
    st.show(resolve_project(st.api, project))


@project_app.command("create")
def project_create(ctx: typer.Context, name: str,
                   description: Annotated[str, typer.Option(help="Free text.")] = "") -> None:
    """Create a project (admin)."""
    st = state(ctx)
    st.show(st.api.post("/v1/projects", {"name": name, "description": description}))


@project_app.command("delete")
def project_delete(ctx: typer.Context, project: str) -> None:
    """Delete an empty project (admin)."""
    st = state(ctx)
    p = resolve_project(st.api, project)
    st.api.delete(f"/v1/projects/{p['id']}")
    st.done(f"Deleted project {p['name']} ({p['id']}).", {"id": p["id"], "deleted": True})


@user_app.command("list")
def user_list(ctx: typer.Context) -> None:
    """Every user (admin)."""
    st = state(ctx)
    st.show(items_of(st.api.get_all("/v1/users"), "users"), USER_COLUMNS)


@user_app.command("show")
def user_show(ctx: typer.Context, user: str) -> None:
    """One user, by name or id (admin)."""
    st = state(ctx)
    st.show(resolve_user(st.api, user))


@user_app.command("create")
def user_create(
    ctx: typer.Context,
    name: str,
    project: Annotated[str | None, typer.Option(help="Give a role on this project.")] = None,
    role: Annotated[str, typer.Option(help="admin, member or reader.")] = "member",
    password_stdin: Annotated[bool, typer.Option(help="Read the password from stdin.")] = False,
) -> None:
    """Create a user (admin); the password is prompted for unless --password-stdin."""
    st = state(ctx)
    password = (sys.stdin.readline().rstrip("\n") if password_stdin
                else typer.prompt("Password", hide_input=True, confirmation_prompt=True))
    body: dict[str, Any] = {"name": name, "password": password, "role": role}
    if project is not None:
        body["project_id"] = resolve_project(st.api, project)["id"]
    st.show(st.api.post("/v1/users", body))


@user_app.command("delete")
def user_delete(ctx: typer.Context, user: str) -> None:
    """Delete a user and their credentials (admin)."""
    st = state(ctx)
    u = resolve_user(st.api, user)
    st.api.delete(f"/v1/users/{u['id']}")
    st.done(f"Deleted user {u['name']} ({u['id']}).", {"id": u["id"], "deleted": True})


def _set_enabled(ctx: typer.Context, user: str, enabled: bool) -> None:
    st = state(ctx)
    u = resolve_user(st.api, user)
    st.show(st.api.patch(f"/v1/users/{u['id']}", {"enabled": enabled}))


@user_app.command("disable")
def user_disable(ctx: typer.Context, user: str) -> None:
    """Stop USER logging in; their tokens and application credentials end at once (admin)."""
    _set_enabled(ctx, user, False)


@user_app.command("enable")
def user_enable(ctx: typer.Context, user: str) -> None:
    """Let a disabled USER log in again (credentials ended by disabling stay ended; admin)."""
    _set_enabled(ctx, user, True)


@password_app.command("change")
def password_change(
    ctx: typer.Context,
    stdin: Annotated[bool, typer.Option(
        "--stdin", help="Read the current and the new password from stdin, one a line.")
    ] = False,
) -> None:
    """Change your password (needs the current one); every token of yours is revoked."""
    st = state(ctx)
    if stdin:
        old, new = sys.stdin.readline().rstrip("\n"), sys.stdin.readline().rstrip("\n")
    else:
        old = typer.prompt("Current password", hide_input=True)
        new = typer.prompt("New password", hide_input=True, confirmation_prompt=True)
    st.api.post("/v1/auth/password", {"old_password": old, "new_password": new})
    st.done("Password changed; every token of yours was revoked: log in again with "
            "'minicloud login'.", {"changed": True})


@member_app.command("list")
def member_list(ctx: typer.Context, project: str) -> None:
    """Users with a role on PROJECT."""
    st = state(ctx)
    p = resolve_project(st.api, project)
    st.show(items_of(st.api.get(f"/v1/projects/{p['id']}/members"), "members"), MEMBER_COLUMNS)


@member_app.command("set")
def member_set(ctx: typer.Context, project: str, user: str,
               role: Annotated[str, typer.Argument(help="admin, member or reader.")]) -> None:
    """Give USER exactly ROLE on PROJECT (admin)."""
    st = state(ctx)
    p, u = resolve_project(st.api, project), resolve_user(st.api, user)
    st.show(st.api.put(f"/v1/projects/{p['id']}/members/{u['id']}", {"role": role}))


@member_app.command("remove")
def member_remove(ctx: typer.Context, project: str, user: str) -> None:
    """Take USER's role on PROJECT away (admin)."""
    st = state(ctx)
    p, u = resolve_project(st.api, project), resolve_user(st.api, user)
    st.api.delete(f"/v1/projects/{p['id']}/members/{u['id']}")
    st.done(f"Removed {u['name']} from {p['name']}.",
            {"project_id": p["id"], "user_id": u["id"], "removed": True})


@credential_app.command("list")
def credential_list(ctx: typer.Context) -> None:
    """Your application credentials (never their secrets)."""
    st = state(ctx)
    st.show(items_of(st.api.get_all("/v1/application-credentials"), "application_credentials"),
            CREDENTIAL_COLUMNS)


@credential_app.command("create")
def credential_create(
    ctx: typer.Context,
    name: str,
    expires_at: Annotated[str | None, typer.Option(
        help="ISO 8601 expiry, e.g. 2027-01-01T00:00:00Z (default: never).")] = None,
) -> None:
    """Create an application credential for your user and project; the secret is shown once."""
    st = state(ctx)
    body: dict[str, Any] = {"name": name}
    if expires_at:
        body["expires_at"] = expires_at
    cred = st.api.post("/v1/application-credentials", body)
    st.show(cred)
    if not st.json:
        typer.echo("The secret is shown only once. Use it as MINICLOUD_TOKEN or with "
                   "'minicloud login --token-stdin'.")


@credential_app.command("delete")
def credential_delete(ctx: typer.Context, credential: str) -> None:
    """Delete one of your application credentials, by name or id."""
    st = state(ctx)
    creds = items_of(st.api.get_all("/v1/application-credentials"), "application_credentials")
    try:
        c = pick(creds, credential, "credential")
    except CliError:
        if not is_uuid(credential):
            raise
        c = {"id": credential, "name": credential}
    st.api.delete(f"/v1/application-credentials/{c['id']}")
    st.done(f"Deleted credential {c['name']} ({c['id']}).", {"id": c["id"], "deleted": True})
