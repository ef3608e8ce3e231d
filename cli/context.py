"""Per-invocation state shared by all commands: output mode, config, API client."""

from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Any

import typer

from cli import config, render
from cli.client import ApiClient, CliError

UUID = re.compile(r"^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$")


@dataclass
class State:
    """Options of the root command and the lazily opened API client."""

    json: bool = False
    url: str | None = None
    token: str | None = None
    _client: ApiClient | None = field(default=None, repr=False)

    @property
    def config(self) -> config.CliConfig:
        """The merged configuration (options > environment > config file)."""
        return config.load(self.url, self.token)

    @property
    def api(self) -> ApiClient:
        """The API client; raises CliError when no credential is configured."""
        if self._client is None:
            cfg = self.config
            if not cfg.token:
                raise CliError("Not logged in: run 'minicloud login' or set MINICLOUD_TOKEN.",
                               code="not_logged_in")
            self._client = ApiClient(cfg.url, cfg.token)
        return self._client

    def close(self) -> None:
        """Close the client if one was opened."""
        if self._client is not None:
            self._client.close()
            self._client = None

    def show(self, data: Any, columns: list[str] | None = None, *,
             title: str | None = None) -> None:
        """Print a list as a table, an object as FIELD/VALUE, or either as JSON."""
        if self.json:
            render.emit_json(data)
        elif isinstance(data, list):
            render.table(data, columns or [], title=title)
        elif isinstance(data, dict):
            render.record(data, title=title)
        else:
            render.message(str(data))

    def done(self, text: str, data: Any = None) -> None:
        """Confirm an action: a sentence for people, ``data`` (or {}) as JSON for scripts."""
        if self.json:
            render.emit_json(data if data is not None else {})
        else:
            render.message(text)


def state(ctx: typer.Context) -> State:
    """The ``State`` of this invocation (created by the root callback)."""
    root = ctx.find_root()
    if not isinstance(root.obj, State):
        root.obj = State()
    return root.obj


def is_uuid(ref: str) -> bool:
    """Whether ``ref`` looks like an object id rather than a name."""
    return bool(UUID.match(ref))


def pick(items: list[dict[str, Any]], ref: str, kind: str) -> dict[str, Any]:
    """The one item whose id or name is ``ref``; raises CliError when none or several match."""
    by_id = [i for i in items if i.get("id") == ref]
    if by_id:
        return by_id[0]
    named = [i for i in items if i.get("name") == ref]
    if not named:
        raise CliError(f"No {kind} named or with id {ref!r}.", code=f"{kind.replace(' ', '_')}"
                       "_not_found")
    if len(named) > 1:
        ids = ", ".join(str(i.get("id")) for i in named)
        raise CliError(f"{len(named)} {kind}s are named {ref!r} ({ids}); use the id.",
                       code="ambiguous_name")
    return named[0]


def items_of(body: Any, key: str) -> list[dict[str, Any]]:
    """The list in an answer that is either a bare list or ``{key: [...]}``."""
    if isinstance(body, dict):
        body = body.get(key, [])
    return [i for i in body if isinstance(i, dict)] if isinstance(body, list) else []
