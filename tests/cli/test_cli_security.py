"""The CLI against hostile tenant strings, and its commands for credentials (docs/security.md)."""

from __future__ import annotations

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.agent_factories import enroll_host, make_server
from tests.cli.conftest import Mc, parse
from tests.conftest import ADMIN_TOKEN
from tests.factories import bearer, make_account, make_project, unique

MARKUP_NAMES = ["[/]", "[bold]x", "[red]not red[/red]", ":smile: [link=http://e]y"]


def test_tenant_names_that_look_like_markup_print_literally(
        mc: Mc, http: httpx.Client, client: TestClient, admin: dict[str, str]) -> None:
    acct = make_account(http, bearer(ADMIN_TOKEN))
    host = enroll_host(client, admin)
    for name in MARKUP_NAMES:
        r = http.post("/v1/images", headers=acct.headers, json={"name": name,
                                                                "disk_format": "raw"})
        assert r.status_code == 201, r.text
        make_server(client, acct.project_id, host.id, name=name, status="ACTIVE",
                    task_state=None)

    for command in (("image", "list"), ("server", "list")):
        result = mc(*command, token=acct.token)
        assert result.exit_code == 0, result.output
        for name in MARKUP_NAMES:
            assert name in result.stdout, (command, name, result.stdout)
    result = mc("image", "show", "[bold]x", token=acct.token)
    assert result.exit_code == 0, result.output
    assert "[bold]x" in result.stdout
    result = mc("server", "delete", "[/]", token=acct.token)
    assert result.exit_code == 0, result.output
    assert "[/]" in result.stdout


CONSOLE = (b"boot ok\r\n"
           b"\x1b[2J\x1b[H"  # clear the screen, cursor home
           b"\x1b]0;window title\x07"  # OSC: set the terminal's title
           b"\x1b]52;c;cHduZWQ=\x1b\\"  # OSC 52: write the clipboard
           b"\x1bP+q544e\x1b\\"  # DCS: query the terminal
           + "\u009b31m".encode()  # 8-bit CSI
           + b"login: \x1b[31mred\x1b[0m\tok\x07\x08\x00\rfake prompt\n")


def test_the_console_is_printed_without_terminal_control_sequences(
        mc: Mc, http: httpx.Client, client: TestClient, admin: dict[str, str]) -> None:
    acct = make_account(http, bearer(ADMIN_TOKEN))
    host = enroll_host(client, admin)
    server_id = make_server(client, acct.project_id, host.id, status="ACTIVE", task_state=None)
    r = http.put(f"/v1/agent/servers/{server_id}/console", headers=host.headers, content=CONSOLE)
    assert r.status_code == 204, r.text

    result = mc("server", "console", server_id, token=acct.token)
    assert result.exit_code == 0, result.output
    assert result.stdout == "boot ok\nlogin: red\tokfake prompt\n"
    # Scripts that ask for JSON get the bytes as they are (JSON escapes every control).
    assert "\x1b[2J" in parse(mc("--json", "server", "console", server_id,
                                 token=acct.token))["output"]


def _login(http: httpx.Client, user: str, password: str, project: str) -> httpx.Response:
    return http.post("/v1/auth/tokens",
                     json={"user": user, "password": password, "project": project})


@pytest.fixture
def person(http: httpx.Client) -> tuple[str, str, str, str]:
    """(user name, user id, password, project id) of a new member."""
    project = make_project(http, bearer(ADMIN_TOKEN))
    name, password = unique("user"), "pw-" + unique("p")
    r = http.post("/v1/users", headers=bearer(ADMIN_TOKEN), json={
        "name": name, "password": password, "project_id": project["id"]})
    assert r.status_code == 201, r.text
    return name, r.json()["id"], password, project["id"]


def test_password_change(mc: Mc, http: httpx.Client, person: tuple[str, str, str, str]) -> None:
    name, _, password, project = person
    token = _login(http, name, password, project).json()["token"]
    result = mc("password", "change", "--stdin", token=token,
                input=f"{password}\nthe-new-password\n")
    assert result.exit_code == 0, result.output
    assert "log in again" in result.stdout
    assert http.get("/v1/auth/tokens/current", headers=bearer(token)).status_code == 401
    assert _login(http, name, "the-new-password", project).status_code == 201

    token = _login(http, name, "the-new-password", project).json()["token"]
    result = mc("password", "change", "--stdin", token=token, input="wrong\nwhatever-else\n")
    assert result.exit_code == 1
    assert "wrong_password" in result.stderr


def test_user_disable_and_enable(mc: Mc, http: httpx.Client,
                                 person: tuple[str, str, str, str]) -> None:
    name, user_id, password, project = person
    token = _login(http, name, password, project).json()["token"]
    assert parse(mc("--json", "user", "disable", name))["enabled"] is False
    assert http.get("/v1/auth/tokens/current", headers=bearer(token)).status_code == 401
    assert _login(http, name, password, project).status_code == 401
    assert parse(mc("--json", "user", "enable", user_id))["enabled"] is True
    assert _login(http, name, password, project).status_code == 201


def test_host_credential_rotate_and_revoke(mc: Mc, http: httpx.Client, client: TestClient,
                                           admin: dict[str, str]) -> None:
    host = enroll_host(client, admin)

    def heartbeat(credential: str) -> int:
        return http.post("/v1/agent/heartbeat", headers=bearer(credential),
                         json={"observed": []}).status_code

    result = mc("host", "credential", "rotate", host.name)
    assert result.exit_code == 0, result.output
    new = result.stdout.strip()
    assert new.startswith("mch_") and new != host.credential
    assert (heartbeat(host.credential), heartbeat(new)) == (401, 200)
    result = mc("host", "credential", "revoke", host.name)
    assert result.exit_code == 0, result.output
    assert heartbeat(new) == 401
