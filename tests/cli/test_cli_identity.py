"""The CLI on identity: login and its config file, projects, users, members, credentials,
errors, and the control-node commands ``db upgrade`` and ``admin bootstrap``."""

from __future__ import annotations

import json
import stat
import uuid
from pathlib import Path

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import create_engine, inspect

from api.config import Settings
from api.main import create_app
from tests.cli.conftest import Mc, assert_readable_error, parse
from tests.conftest import ADMIN_TOKEN
from tests.db import fresh_database
from tests.factories import bearer, make_account, make_project, unique


def make_user_with_password(http: httpx.Client, role: str = "member") -> tuple[str, str, str]:
    """A user with ``role`` on a new project; returns (user, password, project name)."""
    project = make_project(http, bearer(ADMIN_TOKEN))
    name, password = unique("user"), "pw-" + uuid.uuid4().hex
    r = http.post("/v1/users", json={"name": name, "password": password,
                                     "project_id": project["id"], "role": role},
                  headers=bearer(ADMIN_TOKEN))
    assert r.status_code == 201, r.text
    return name, password, project["name"]


def test_login_writes_a_0600_config_that_later_commands_use(
        mc: Mc, http: httpx.Client, api_url: str, config_file: Path) -> None:
    user, password, project = make_user_with_password(http)

    result = mc("login", "--url", api_url, "--user", user, "--project", project,
                "--password-stdin", token=None, input=password + "\n")

    assert result.exit_code == 0, result.output
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600
    saved = json.loads(config_file.read_text())
    assert saved["url"] == api_url and saved["user"] == user and saved["project"] == project
    who = parse(mc("--json", "whoami", token=None))
    assert who["user"]["name"] == user and who["role"] == "member"


def test_logout_revokes_the_token_and_removes_the_config(
        mc: Mc, http: httpx.Client, api_url: str, config_file: Path) -> None:
    user, password, project = make_user_with_password(http)
    assert mc("login", "--user", user, "--project", project, "--password-stdin",
              token=None, input=password).exit_code == 0
    token = json.loads(config_file.read_text())["token"]

    assert mc("logout", token=None).exit_code == 0

    assert not config_file.exists()
    assert http.get("/v1/auth/tokens/current", headers=bearer(token)).status_code == 401
    assert_readable_error(mc("whoami", token=None), "not_logged_in")


def test_login_with_a_wrong_password_fails_readably(mc: Mc, http: httpx.Client,
                                                    config_file: Path) -> None:
    user, _, project = make_user_with_password(http)

    result = mc("login", "--user", user, "--project", project, "--password-stdin",
                token=None, input="not-the-password\n")

    assert_readable_error(result, "HTTP 401")
    assert not config_file.exists()


def test_login_with_an_application_credential_from_stdin(mc: Mc, config_file: Path) -> None:
    result = mc("login", "--token-stdin", token=None, input=ADMIN_TOKEN + "\n")

    assert result.exit_code == 0, result.output
    assert json.loads(config_file.read_text())["token"] == ADMIN_TOKEN
    assert stat.S_IMODE(config_file.stat().st_mode) == 0o600


def test_project_user_and_member_commands(mc: Mc) -> None:
    pname, uname = unique("proj"), unique("user")

    project = parse(mc("--json", "project", "create", pname, "--description", "from the CLI"))
    user = parse(mc("--json", "user", "create", uname, "--project", pname, "--role", "member",
                    "--password-stdin", input="pw-long-enough\n"))
    member = parse(mc("--json", "member", "set", pname, uname, "reader"))
    members = parse(mc("--json", "member", "list", pname))

    assert project["name"] == pname and project["description"] == "from the CLI"
    assert member == {"user_id": user["id"], "user_name": uname, "project_id": project["id"],
                      "role": "reader"}
    assert members == [member]
    assert pname in {p["name"] for p in parse(mc("--json", "project", "list"))}
    assert uname in {u["name"] for u in parse(mc("--json", "user", "list"))}
    # Tables for people: the names show up in the default output.
    assert pname in mc("project", "list").stdout

    assert mc("member", "remove", pname, uname).exit_code == 0
    assert parse(mc("--json", "member", "list", pname)) == []
    assert mc("user", "delete", uname).exit_code == 0
    assert mc("project", "delete", project["id"]).exit_code == 0
    assert_readable_error(mc("project", "show", pname), "project_not_found")


def test_credential_create_list_use_delete(mc: Mc, http: httpx.Client) -> None:
    account = make_account(http, bearer(ADMIN_TOKEN), "member")
    name = unique("ci")

    cred = parse(mc("--json", "credential", "create", name, token=account.token))
    listed = parse(mc("--json", "credential", "list", token=account.token))
    who = parse(mc("--json", "whoami", token=cred["secret"]))

    assert cred["secret"] and cred["project_id"] == account.project_id
    assert [c["name"] for c in listed] == [name]
    assert "secret" not in listed[0] or listed[0]["secret"] is None
    assert who["user"]["id"] == account.user_id and who["credential"] == "application_credential"

    assert mc("credential", "delete", name, token=account.token).exit_code == 0
    assert_readable_error(mc("whoami", token=cred["secret"]), "HTTP 401")


def test_errors_are_one_readable_line_with_code_and_exit_code(mc: Mc, http: httpx.Client) -> None:
    member = make_account(http, bearer(ADMIN_TOKEN), "member")

    missing = mc("project", "show", str(uuid.uuid4()))
    forbidden = mc("project", "create", unique("proj"), token=member.token)
    invalid = mc("project", "create", "no spaces allowed")
    bad_token = mc("project", "list", token="mcac_not-a-real-token-at-all-0000")
    unreachable = mc("project", "list", url="http://127.0.0.1:9")

    assert_readable_error(missing, "project_not_found")
    assert "HTTP 404" in missing.stderr and "request req-" in missing.stderr
    assert_readable_error(forbidden, "admin_required")
    assert_readable_error(invalid, "invalid_input")
    assert_readable_error(bad_token, "HTTP 401")
    assert_readable_error(unreachable, "api_unreachable", exit_code=3)


def test_json_output_of_list_commands_parses(mc: Mc) -> None:
    projects = parse(mc("--json", "project", "list"))
    who = parse(mc("--json", "whoami"))

    assert isinstance(projects, list) and all("id" in p for p in projects)
    assert who["project"]["name"] == "admin" and who["role"] == "admin"


def test_db_upgrade_creates_the_schema_on_a_fresh_sqlite_file(mc: Mc, tmp_path: Path) -> None:
    url = f"sqlite:///{tmp_path / 'fresh.db'}"

    result = mc("db", "upgrade", "--database-url", url)

    assert result.exit_code == 0, result.output
    tables = set(inspect(create_engine(url)).get_table_names())
    assert {"alembic_version", "projects", "servers", "hosts", "images"} <= tables
    # Running it again is a no-op.
    assert mc("db", "upgrade", "--database-url", url).exit_code == 0


def test_admin_bootstrap_prints_a_working_credential_once(mc: Mc, tmp_path: Path) -> None:
    with fresh_database(tmp_path) as url:
        assert mc("db", "upgrade", "--database-url", url).exit_code == 0

        first = parse(mc("--json", "admin", "bootstrap", "--database-url", url))
        again = mc("admin", "bootstrap", "--database-url", url)

        assert_readable_error(again, "already_bootstrapped")
        settings = Settings(database_url=url, data_dir=tmp_path / "data")
        with TestClient(create_app(settings)) as client:
            who = client.get("/v1/auth/tokens/current", headers=bearer(first["credential"]))
            login = client.post("/v1/auth/tokens", json={
                "user": "admin", "password": first["password"], "project": "admin"})
        assert who.status_code == 200 and who.json()["role"] == "admin"
        assert login.status_code == 201


def test_admin_bootstrap_with_a_password_from_stdin(mc: Mc, tmp_path: Path) -> None:
    with fresh_database(tmp_path) as url:
        assert mc("db", "upgrade", "--database-url", url).exit_code == 0

        result = mc("admin", "bootstrap", "--database-url", url, "--password-stdin",
                    input="admin-password-1\n")

        assert result.exit_code == 0, result.output
        assert "admin-password-1" not in result.stdout
        assert "shown only once" in result.stdout
        with TestClient(create_app(Settings(database_url=url, data_dir=tmp_path))) as client:
            r = client.post("/v1/auth/tokens", json={
                "user": "admin", "password": "admin-password-1", "project": "admin"})
        assert r.status_code == 201
