"""Where the CLI finds the API and its credential.

Order of precedence: command line options, then the environment (``MINICLOUD_URL``,
``MINICLOUD_TOKEN``), then the config file written by ``minicloud login``
(``$MINICLOUD_CONFIG``, else ``$XDG_CONFIG_HOME/minicloud/config.json``, else
``~/.config/minicloud/config.json``; mode 0600 because it holds a secret).
"""

from __future__ import annotations

import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Any

DEFAULT_URL = "http://127.0.0.1:8774"


@dataclass
class CliConfig:
    """What the CLI needs to talk to the API."""

    url: str = ""
    token: str = ""
    user: str = ""
    project: str = ""
    expires_at: str | None = None


def config_path() -> Path:
    """The config file's location (it may not exist)."""
    explicit = os.environ.get("MINICLOUD_CONFIG")
    if explicit:
        return Path(explicit).expanduser()
    base = os.environ.get("XDG_CONFIG_HOME") or str(Path.home() / ".config")
    return Path(base) / "minicloud" / "config.json"


def load_file(path: Path | None = None) -> CliConfig:
    """The saved config, or an empty one when there is none or it cannot be read."""
    path = path or config_path()
    try:
        raw: Any = json.loads(path.read_text())
    except (OSError, ValueError):
        return CliConfig()
    if not isinstance(raw, dict):
        return CliConfig()
    known = {k: raw[k] for k in CliConfig.__dataclass_fields__ if isinstance(raw.get(k), str)}
    return CliConfig(**known)


def load(url: str | None = None, token: str | None = None) -> CliConfig:
    """Merge options, environment and the config file (in that order of precedence)."""
    cfg = load_file()
    cfg.url = url or os.environ.get("MINICLOUD_URL") or cfg.url or DEFAULT_URL
    env_token = os.environ.get("MINICLOUD_TOKEN")
    if token or env_token:
        # A token from elsewhere does not belong to the saved user/project.
        cfg.token = token or env_token or ""
        cfg.user = cfg.project = ""
        cfg.expires_at = None
    cfg.url = cfg.url.rstrip("/")
    return cfg


def save(cfg: CliConfig, path: Path | None = None) -> Path:
    """Write the config file with mode 0600 (atomically: a reader never sees half a file)."""
    path = path or config_path()
    path.parent.mkdir(parents=True, exist_ok=True, mode=0o700)
    tmp = path.with_name(path.name + ".tmp")
    # Create with 0600 from the start so the secret is never readable by others, not even briefly.
    fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        json.dump(asdict(cfg), f, indent=2)
        f.write("\n")
    os.chmod(tmp, 0o600)
    os.replace(tmp, path)
    return path


def remove(path: Path | None = None) -> bool:
    """Delete the config file; True if there was one."""
    path = path or config_path()
    try:
        path.unlink()
    except FileNotFoundError:
        return False
    return True
