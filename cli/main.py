"""``minicloud``: the command line client of the minicloud API.

Exit codes: 0 success, 1 the API (or the local database) refused or an awaited server failed,
2 bad usage, 3 the API cannot be reached.
"""

from __future__ import annotations

import os
import sys
from typing import Annotated, Any

import httpx
import typer
from typer.core import TyperGroup

from cli import (
    admin,
    config,
    flavors,
    hosts,
    identity,
    images,
    keypairs,
    quotas,
    render,
    scaling,
    servers,
    usage,
)
from cli.client import ApiClient, CliError
from cli.context import State, state


class MinicloudGroup(TyperGroup):
    """The root group: every CliError becomes one readable line and an exit code."""

    # ``Any``: typer >= 0.25 vendors click, older versions use click itself.
    def invoke(self, ctx: Any) -> Any:
        """Run the command; render CliError instead of a traceback."""
        try:
            return super().invoke(ctx)
        except CliError as exc:
            render.error(exc)
            raise typer.Exit(exc.exit_code) from None
        except (httpx.HTTPError, httpx.InvalidURL) as exc:
            # e.g. a malformed MINICLOUD_URL: still one readable line, not a traceback.
            render.error(CliError(f"{exc.__class__.__name__}: {exc}", code="http_error"))
            raise typer.Exit(1) from None
        except KeyboardInterrupt:
            raise typer.Exit(130) from None
        finally:
            if isinstance(ctx.obj, State):
                ctx.obj.close()


app = typer.Typer(
    cls=MinicloudGroup,
    name="minicloud",
    help="Command line client of minicloud, a small OpenStack-like cloud.",
    no_args_is_help=True,
    pretty_exceptions_show_locals=False,  # locals would show tokens and passwords
    context_settings={"help_option_names": ["-h", "--help"]},
)


@app.callback()
def root(
    ctx: typer.Context,
    json_out: Annotated[bool, typer.Option("--json", help="Print JSON instead of tables.")] = False,
    url: Annotated[str | None, typer.Option(help="API URL (default: $MINICLOUD_URL or the "
                                                 "config file).")] = None,
    token: Annotated[str | None, typer.Option(help="Bearer token (default: $MINICLOUD_TOKEN "
                                                   "or the config file).")] = None,
) -> None:
    """Command line client of minicloud. Put --json before the command for JSON output."""
    ctx.obj = State(json=json_out, url=url, token=token)


def _read_secret_stdin() -> str:
    secret = sys.stdin.readline().strip()
    if not secret:
        raise CliError("Nothing on standard input.", code="empty_secret")
    return secret


@app.command()
def login(
    ctx: typer.Context,
    url: Annotated[str | None, typer.Option("--url", help="API URL.")] = None,
    user: Annotated[str | None, typer.Option("--user", "-u", help="User name.")] = None,
    project: Annotated[str | None, typer.Option("--project", "-p",
                                                help="Project name or id.")] = None,
    password_stdin: Annotated[bool, typer.Option(help="Read the password from stdin.")] = False,
    token_stdin: Annotated[bool, typer.Option(
        help="Read an application credential (or token) from stdin instead of logging in "
             "with a password.")] = False,
) -> None:
    """Log in and save the API URL and token in the config file (mode 0600)."""
    st = state(ctx)
    cfg = config.load_file()
    base = (url or st.url or os.environ.get("MINICLOUD_URL") or cfg.url
            or config.DEFAULT_URL).rstrip("/")
    if token_stdin:
        secret = _read_secret_stdin()
    else:
        if not user or not project:
            raise CliError("Give --user and --project (or --token-stdin).", code="usage")
        password = _read_secret_stdin() if password_stdin else typer.prompt(
            "Password", hide_input=True)
        anon = ApiClient(base)
        try:
            issued = anon.post("/v1/auth/tokens",
                               {"user": user, "password": password, "project": project})
        finally:
            anon.close()
        secret = issued["token"]
    check = ApiClient(base, secret)
    try:
        who = check.get("/v1/auth/tokens/current")
    finally:
        check.close()
    saved = config.CliConfig(url=base, token=secret, user=who["user"]["name"],
                             project=who["project"]["name"],
                             expires_at=who.get("expires_at"))
    path = config.save(saved)
    st.done(f"Logged in as {saved.user} on project {saved.project} ({who['role']}); "
            f"config saved to {path}",
            {"url": base, "user": who["user"], "project": who["project"], "role": who["role"],
             "expires_at": who.get("expires_at"), "config": str(path)})


@app.command()
def logout(ctx: typer.Context) -> None:
    """Revoke the saved token (if it is a login token) and delete the config file."""
    st = state(ctx)
    cfg = config.load_file()
    if cfg.token:
        client = ApiClient(cfg.url or config.DEFAULT_URL, cfg.token)
        try:
            who = client.get("/v1/auth/tokens/current")
            if who.get("credential") == "token":
                client.delete("/v1/auth/tokens/current")
        except CliError:
            pass  # an expired or unreachable token is gone for our purpose anyway
        finally:
            client.close()
    removed = config.remove()
    st.done("Logged out." if removed else "Not logged in.", {"removed": removed})


@app.command()
def whoami(ctx: typer.Context) -> None:
    """Show the user, project and role of the current credential."""
    st = state(ctx)
    who = st.api.get("/v1/auth/tokens/current")
    who.pop("token", None)  # never returned here; keep the table short
    who["url"] = st.api.url
    st.show(who)


app.add_typer(admin.db_app, name="db")
app.add_typer(admin.admin_app, name="admin")
app.add_typer(servers.app, name="server")
app.add_typer(servers.group_app, name="server-group")
app.add_typer(flavors.app, name="flavor")
app.add_typer(images.app, name="image")
app.add_typer(identity.project_app, name="project")
app.add_typer(identity.user_app, name="user")
app.add_typer(identity.member_app, name="member")
app.add_typer(identity.credential_app, name="credential")
app.add_typer(identity.password_app, name="password")
app.add_typer(quotas.app, name="quota")
app.add_typer(hosts.app, name="host")
app.add_typer(hosts.az_app, name="availability-zone")
app.add_typer(usage.app, name="usage")
app.add_typer(keypairs.app, name="keypair")
app.add_typer(scaling.app, name="group")


def run() -> None:
    """Console script entry point."""
    app()
if __name__ == "__main__":
    run()
