"""SSH key pairs: ``minicloud keypair create/list/show/delete`` (per user)."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any
from urllib.parse import quote

import typer

from cli import render
from cli.client import CliError
from cli.context import state

app = typer.Typer(help="SSH key pairs (yours, in every project).", no_args_is_help=True)

COLUMNS = ["name", "type", "fingerprint"]


def _path(name: str) -> str:
    return f"/v1/keypairs/{quote(name, safe='')}"


@app.command("create")
def keypair_create(
    ctx: typer.Context,
    name: str,
    public_key: Annotated[Path | None, typer.Option(
        help="Import this OpenSSH public key file (else a new ed25519 pair is generated).")]
    = None,
    private_key_file: Annotated[Path | None, typer.Option(
        help="Write a generated private key here (mode 0600) instead of printing it.")]
    = None,
) -> None:
    """Import a public key, or generate a pair: its private key is shown only this once."""
    st = state(ctx)
    body: dict[str, Any] = {"name": name}
    if public_key is not None:
        try:
            body["public_key"] = public_key.read_text().strip()
        except (OSError, UnicodeDecodeError) as exc:
            raise CliError(f"Cannot read the key file {public_key}: {exc}",
                           code="bad_file") from None
    created: dict[str, Any] = st.api.post("/v1/keypairs", body)
    private = created.get("private_key")
    if private is not None and private_key_file is not None:
        try:
            private_key_file.touch(mode=0o600, exist_ok=False)
            private_key_file.write_text(private)
        except OSError as exc:
            raise CliError(f"Cannot write {private_key_file}: {exc}. The private key was "
                           "shown once and is lost: delete the key pair and create it again.",
                           code="bad_file") from None
        created.pop("private_key")
    st.show(created)
    if private is not None and private_key_file is None and not st.json:
        render.message("Save the private key now: minicloud does not keep it.")


@app.command("list")
def keypair_list(ctx: typer.Context) -> None:
    """Your key pairs."""
    st = state(ctx)
    st.show(st.api.get_all("/v1/keypairs", items="keypairs"), COLUMNS)


@app.command("show")
def keypair_show(ctx: typer.Context, name: str) -> None:
    """One of your key pairs."""
    st = state(ctx)
    st.show(st.api.get(_path(name)))


@app.command("delete")
def keypair_delete(ctx: typer.Context, name: str) -> None:
    """Delete one of your key pairs (servers booted with it keep their key)."""
    st = state(ctx)
    st.api.delete(_path(name))
    render.message(f"Deleted key pair {name}.")
