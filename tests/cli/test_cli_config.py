"""Where the CLI takes its URL and token from: options > environment > config file."""

from __future__ import annotations

import json
import stat
from pathlib import Path

import pytest

from cli import config


@pytest.fixture
def saved(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    path = tmp_path / "minicloud" / "config.json"
    monkeypatch.setenv("MINICLOUD_CONFIG", str(path))
    monkeypatch.delenv("MINICLOUD_URL", raising=False)
    monkeypatch.delenv("MINICLOUD_TOKEN", raising=False)
    config.save(config.CliConfig(url="http://saved:1", token="saved-token", user="alice",
                                 project="demo"))
    return path


def test_save_writes_mode_0600_and_load_reads_it_back(saved: Path) -> None:
    cfg = config.load()

    assert stat.S_IMODE(saved.stat().st_mode) == 0o600
    assert (cfg.url, cfg.token, cfg.user, cfg.project) == ("http://saved:1", "saved-token",
                                                           "alice", "demo")


def test_environment_beats_the_file_and_options_beat_both(
        saved: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("MINICLOUD_URL", "http://env:2/")
    monkeypatch.setenv("MINICLOUD_TOKEN", "env-token")

    from_env = config.load()
    from_options = config.load(url="http://opt:3", token="opt-token")

    assert (from_env.url, from_env.token, from_env.user) == ("http://env:2", "env-token", "")
    assert (from_options.url, from_options.token) == ("http://opt:3", "opt-token")


def test_a_broken_config_file_counts_as_none(saved: Path) -> None:
    saved.write_text("{not json")

    cfg = config.load()

    assert (cfg.url, cfg.token) == (config.DEFAULT_URL, "")


def test_unknown_or_wrongly_typed_fields_are_ignored(saved: Path) -> None:
    saved.write_text(json.dumps({"url": "http://x:1", "token": 5, "extra": "y"}))

    cfg = config.load()

    assert (cfg.url, cfg.token) == ("http://x:1", "")
