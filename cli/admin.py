"""Control-node commands that work on the database directly: ``db upgrade``, ``admin bootstrap``.

These are the only commands that import the API package: they run where the API runs, with
the same ``MINICLOUD_*`` settings, before the API serves anything.
"""

from __future__ import annotations

import sys
from typing import Annotated, Any

import typer

from cli.client import CliError
from cli.context import state

db_app = typer.Typer(help="Database schema (control node).", no_args_is_help=True)
admin_app = typer.Typer(help="First-start administration (control node).", no_args_is_help=True)

DatabaseUrl = Annotated[str | None, typer.Option(
    "--database-url", help="Database URL (default: $MINICLOUD_DATABASE_URL, else an SQLite "
                           "file in $MINICLOUD_DATA_DIR).")]


def _settings(database_url: str | None) -> Any:
    from api.config import Settings

    # A fresh Settings, not the cached one: each command reads the environment as it is now.
    settings = Settings(database_url=database_url) if database_url else Settings()
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    return settings


def _redacted(url: str) -> str:
    from sqlalchemy.engine import make_url

    return make_url(url).render_as_string(hide_password=True)


@db_app.command("upgrade")
def db_upgrade(ctx: typer.Context, database_url: DatabaseUrl = None,
               revision: Annotated[str, typer.Option(help="Target revision.")] = "head") -> None:
    """Bring the database schema up to date (Alembic migrations)."""
    from sqlalchemy.exc import SQLAlchemyError

    from api.migrate import upgrade

    settings = _settings(database_url)
    url = settings.effective_database_url
    try:
        upgrade(url, revision)
    except SQLAlchemyError as exc:
        raise CliError(f"Migration failed on {_redacted(url)}: {exc.__class__.__name__}: "
                       f"{str(exc).splitlines()[0]}", code="migration_failed") from None
    state(ctx).done(f"Database {_redacted(url)} is at {revision}.",
                    {"database_url": _redacted(url), "revision": revision})


@admin_app.command("bootstrap")
def bootstrap(
    ctx: typer.Context,
    database_url: DatabaseUrl = None,
    password_stdin: Annotated[bool, typer.Option(
        help="Read the admin password from stdin (default: a random one, printed once).")
    ] = False,
) -> None:
    """Create the admin project and user, the default flavors, and print an admin credential
    (shown once: keep it)."""
    from sqlalchemy.exc import SQLAlchemyError

    from api.bootstrap import ADMIN_PROJECT, ADMIN_USER, bootstrap_admin
    from api.db import make_engine, make_sessionmaker, session_scope
    from api.errors import DomainError

    password: str | None = None
    if password_stdin:
        password = sys.stdin.readline().rstrip("\n")
        if len(password) < 8:
            raise CliError("The admin password needs at least 8 characters.",
                           code="weak_password")
    settings = _settings(database_url)
    engine = make_engine(settings.effective_database_url)
    try:
        for session in session_scope(make_sessionmaker(engine)):
            result = bootstrap_admin(session, password=password)
    except DomainError as exc:
        raise CliError(exc.detail, code=exc.code) from None
    except SQLAlchemyError as exc:
        raise CliError(f"Database error ({exc.__class__.__name__}); did you run "
                       "'minicloud db upgrade'?", code="database_error") from None
    finally:
        engine.dispose()
    out = {
        "project": ADMIN_PROJECT, "project_id": result.project_id,
        "user": ADMIN_USER, "user_id": result.user_id,
        "password": None if password_stdin else result.password,
        "credential_id": result.credential_id, "credential": result.credential_secret,
    }
    st = state(ctx)
    if st.json:
        st.show(out)
        return
    st.show({k: v for k, v in out.items() if v is not None}, title="minicloud admin")
    typer.echo("The credential and password are shown only once. Use the credential with\n"
               "  export MINICLOUD_TOKEN=<credential>   or   minicloud login --token-stdin")
