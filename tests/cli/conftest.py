"""Fixtures for CLI tests: the real ``minicloud`` app invoked against a live API process."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner, Result

from cli.main import app
from tests.conftest import ADMIN_TOKEN

Mc = Callable[..., Result]


@pytest.fixture(scope="session")
def api_url(shared_api: str) -> str:
    """The base URL of one real API process on the test database."""
    return shared_api


@pytest.fixture
def http(api_url: str) -> Iterator[httpx.Client]:
    """A plain HTTP client on the live API, for setting up and checking what the CLI did."""
    with httpx.Client(base_url=api_url, timeout=30) as c:
        yield c


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    """Where this test's CLI keeps its config file."""
    return tmp_path / "config" / "minicloud.json"


@pytest.fixture
def mc(api_url: str, config_file: Path) -> Mc:
    """Run ``minicloud ARGS`` in-process: ``mc("server", "list", token=..., input=...)``.

    The token defaults to the bootstrapped admin; ``token=None`` leaves MINICLOUD_TOKEN unset
    so the config file is used.
    """
    runner = CliRunner()

    def run(*args: str, token: str | None = ADMIN_TOKEN, input: str | None = None,
            url: str | None = None) -> Result:
        env = {"MINICLOUD_URL": url or api_url, "MINICLOUD_TOKEN": token,
               "MINICLOUD_CONFIG": str(config_file)}
        return runner.invoke(app, list(args), env=env, input=input)

    return run


def parse(result: Result) -> Any:
    """The JSON a ``--json`` command printed; fails the test with the output otherwise."""
    assert result.exit_code == 0, result.output
    return json.loads(result.stdout)


def assert_readable_error(result: Result, code: str, exit_code: int = 1) -> None:
    """The command failed with ``exit_code`` and one readable line naming ``code``."""
    assert result.exit_code == exit_code, result.output
    assert "Error:" in result.stderr, result.output
    assert code in result.stderr, result.output
    assert "Traceback" not in result.output
    assert result.exception is None or isinstance(result.exception, SystemExit)
