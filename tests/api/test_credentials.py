"""Credentials: the login throttle, the bounded password-hashing pool, password change, user
disable, application credentials that cannot mint credentials, and a bootstrap token that works
once (docs/security.md, "Hostile tenant" and "Operator mistakes")."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable
from pathlib import Path

import httpx
from fastapi.testclient import TestClient

from api.config import Settings
from api.main import create_app
from api.migrate import upgrade
from tests.db import fresh_database
from tests.factories import Account, Client, bearer, make_project, unique


def _user(client: Client, admin: dict[str, str]) -> tuple[Account, str]:
    """A logged-in member of a new project, and their password."""
    project = make_project(client, admin)
    name, password = unique("user"), "pw-" + uuid.uuid4().hex
    r = client.post("/v1/users", headers=admin, json={
        "name": name, "password": password, "project_id": project["id"]})
    assert r.status_code == 201, r.text
    token = _login(client, name, password, project["id"]).json()["token"]
    return Account(project["id"], project["name"], r.json()["id"], name, "member",
                   token), password


def _login(client: Client, user: str, password: str, project: str) -> httpx.Response:
    return client.post("/v1/auth/tokens",
                       json={"user": user, "password": password, "project": project})


def _from(url: str, address: str) -> httpx.Client:
    """A client whose requests come from ``address`` (any 127.x.y.z is loopback on Linux)."""
    return httpx.Client(base_url=url, timeout=120,
                        transport=httpx.HTTPTransport(local_address=address))


# The documented defaults (docs/security.md); the tests run with them.
USER_LIMIT, ADDRESS_LIMIT, WINDOW_SECONDS = 10, 50, 300


def _assert_throttled(r: httpx.Response) -> None:
    assert r.status_code == 429, r.text
    assert r.json()["code"] == "login_throttled"
    retry_after = int(r.headers["Retry-After"])
    assert 1 <= retry_after <= WINDOW_SECONDS
    assert r.json()["retry_after"] == retry_after


def test_login_is_throttled_per_user_across_api_processes(
        client: TestClient, admin: dict[str, str], live_api: Callable[[int], list[str]]) -> None:
    urls = live_api(2)
    acct, password = _user(client, admin)
    limit = USER_LIMIT
    with _from(urls[0], "127.0.0.3") as a, _from(urls[1], "127.0.0.3") as b:
        for i in range(limit):  # the failures alternate between two API processes
            r = _login((a, b)[i % 2], acct.user_name, "wrong", acct.project_id)
            assert (r.status_code, r.json()["code"]) == (401, "invalid_credentials")
        for c in (a, b):
            _assert_throttled(_login(c, acct.user_name, "wrong", acct.project_id))
            # While throttled even the right password is refused: guessing gains nothing.
            _assert_throttled(_login(c, acct.user_name, password, acct.project_id))
        # Another user from the same address is not affected.
        other, other_password = _user(client, admin)
        assert _login(a, other.user_name, other_password, other.project_id).status_code == 201


def test_a_successful_login_resets_the_users_count(client: TestClient,
                                                   admin: dict[str, str]) -> None:
    acct, password = _user(client, admin)
    limit = USER_LIMIT
    for _ in range(limit - 1):
        assert _login(client, acct.user_name, "wrong", acct.project_id).status_code == 401
    assert _login(client, acct.user_name, password, acct.project_id).status_code == 201
    for _ in range(limit):
        assert _login(client, acct.user_name, "wrong", acct.project_id).status_code == 401
    _assert_throttled(_login(client, acct.user_name, "wrong", acct.project_id))


def test_login_is_throttled_per_client_address(
        client: TestClient, admin: dict[str, str], live_api: Callable[[int], list[str]]) -> None:
    url = live_api(1)[0]
    acct, password = _user(client, admin)
    limit = ADDRESS_LIMIT
    with _from(url, "127.0.0.4") as c:
        for _ in range(limit):  # a different user name each time: only the address repeats
            assert _login(c, unique("nobody"), "wrong", acct.project_id).status_code == 401
        _assert_throttled(_login(c, unique("nobody"), "wrong", acct.project_id))
        _assert_throttled(_login(c, acct.user_name, password, acct.project_id))
    with _from(url, "127.0.0.5") as elsewhere:
        assert _login(elsewhere, acct.user_name, password, acct.project_id).status_code == 201


def test_a_login_flood_does_not_starve_other_routes(
        client: TestClient, admin: dict[str, str], live_api: Callable[[int], list[str]]) -> None:
    # More concurrent wrong logins than the server has request threads (40), each from its
    # own address so no throttle stops them: every one of them runs Argon2.
    url = live_api(1)[0]
    flood = 120
    done = 0
    first_answer = threading.Event()
    lock = threading.Lock()
    statuses: list[int] = []
    barrier = threading.Barrier(flood)

    def wrong_login(i: int) -> None:
        nonlocal done
        with _from(url, f"127.0.1.{i + 1}") as c:
            barrier.wait()
            r = _login(c, unique("nobody"), "wrong", "admin")
        with lock:
            statuses.append(r.status_code)
            done += 1
        first_answer.set()

    threads = [threading.Thread(target=wrong_login, args=(i,)) for i in range(flood)]
    for t in threads:
        t.start()
    first_answer.wait()
    # The flood is running: a cheap authenticated read answers while most logins still wait
    # for the hashing pool (without the pool it queued behind them for a request thread).
    with httpx.Client(base_url=url, timeout=120) as c:
        r = c.get("/v1/auth/tokens/current", headers=admin)
    with lock:
        answered_before_the_read = done
    for t in threads:
        t.join()
    assert r.status_code == 200
    assert statuses == [401] * flood
    assert answered_before_the_read < flood // 2, answered_before_the_read


def _app_credential(client: TestClient, headers: dict[str, str]) -> dict[str, str]:
    r = client.post("/v1/application-credentials", headers=headers, json={"name": unique("ac")})
    assert r.status_code == 201, r.text
    return bearer(r.json()["secret"])


def test_an_application_credential_cannot_create_credentials(
        client: TestClient, admin: dict[str, str]) -> None:
    acct, password = _user(client, admin)
    cred = _app_credential(client, acct.headers)
    assert client.get("/v1/auth/tokens/current", headers=cred).status_code == 200
    r = client.post("/v1/application-credentials", headers=cred, json={"name": unique("ac")})
    assert (r.status_code, r.json()["code"]) == (403, "app_credential_forbidden")
    r = client.post("/v1/auth/password", headers=cred,
                    json={"old_password": password, "new_password": "a-new-password"})
    assert (r.status_code, r.json()["code"]) == (403, "app_credential_forbidden")
    assert _login(client, acct.user_name, password, acct.project_id).status_code == 201


def test_a_password_change_needs_the_old_password_and_ends_every_token(
        client: TestClient, admin: dict[str, str]) -> None:
    acct, password = _user(client, admin)
    second = bearer(_login(client, acct.user_name, password, acct.project_id).json()["token"])
    cred = _app_credential(client, acct.headers)
    r = client.post("/v1/auth/password", headers=acct.headers,
                    json={"old_password": "not-it", "new_password": "a-new-password"})
    assert (r.status_code, r.json()["code"]) == (403, "wrong_password")
    assert client.get("/v1/auth/tokens/current", headers=second).status_code == 200

    r = client.post("/v1/auth/password", headers=acct.headers,
                    json={"old_password": password, "new_password": "a-new-password"})
    assert r.status_code == 204, r.text
    for headers in (acct.headers, second):
        r = client.get("/v1/auth/tokens/current", headers=headers)
        assert (r.status_code, r.json()["code"]) == (401, "invalid_token")
    assert _login(client, acct.user_name, password, acct.project_id).status_code == 401
    assert _login(client, acct.user_name, "a-new-password", acct.project_id).status_code == 201
    # Application credentials are separate secrets, managed by id: they stay.
    assert client.get("/v1/auth/tokens/current", headers=cred).status_code == 200


def test_wrong_current_passwords_count_against_the_login_throttle(
        client: TestClient, admin: dict[str, str]) -> None:
    # A stolen token is not a second way to guess the password.
    acct, password = _user(client, admin)
    for _ in range(USER_LIMIT):
        r = client.post("/v1/auth/password", headers=acct.headers,
                        json={"old_password": "guess", "new_password": "a-new-password"})
        assert (r.status_code, r.json()["code"]) == (403, "wrong_password")
    r = client.post("/v1/auth/password", headers=acct.headers,
                    json={"old_password": password, "new_password": "a-new-password"})
    _assert_throttled(r)
    _assert_throttled(_login(client, acct.user_name, password, acct.project_id))


def test_disabling_a_user_ends_their_tokens_and_credentials(
        client: TestClient, admin: dict[str, str]) -> None:
    acct, password = _user(client, admin)
    cred = _app_credential(client, acct.headers)
    r = client.patch(f"/v1/users/{acct.user_id}", headers=admin, json={"enabled": False})
    assert (r.status_code, r.json()["enabled"]) == (200, False)
    for headers in (acct.headers, cred):
        r = client.get("/v1/auth/tokens/current", headers=headers)
        assert (r.status_code, r.json()["code"]) == (401, "invalid_token")
    r = _login(client, acct.user_name, password, acct.project_id)
    assert (r.status_code, r.json()["code"]) == (401, "invalid_credentials")

    r = client.patch(f"/v1/users/{acct.user_id}", headers=admin, json={"enabled": True})
    assert (r.status_code, r.json()["enabled"]) == (200, True)
    assert _login(client, acct.user_name, password, acct.project_id).status_code == 201
    # Re-enabling does not bring back what disabling ended.
    assert client.get("/v1/auth/tokens/current", headers=acct.headers).status_code == 401
    assert client.get("/v1/auth/tokens/current", headers=cred).status_code == 401


def test_an_admin_cannot_disable_themselves_and_members_cannot_disable_anyone(
        client: TestClient, admin: dict[str, str]) -> None:
    me = client.get("/v1/auth/tokens/current", headers=admin).json()["user"]["id"]
    r = client.patch(f"/v1/users/{me}", headers=admin, json={"enabled": False})
    assert (r.status_code, r.json()["code"]) == (409, "user_in_use")
    acct, _ = _user(client, admin)
    r = client.patch(f"/v1/users/{acct.user_id}", headers=acct.headers, json={"enabled": False})
    assert (r.status_code, r.json()["code"]) == (403, "admin_required")


def test_the_bootstrap_token_works_once(tmp_path: Path) -> None:
    token = "mcac_bootstrap-once-" + uuid.uuid4().hex
    with fresh_database(tmp_path) as url:
        upgrade(url)
        settings = Settings(database_url=url, data_dir=tmp_path / "data",
                            bootstrap_admin_token=token)
        with TestClient(create_app(settings)) as c:
            boot = bearer(token)
            assert c.get("/v1/users", headers=boot).status_code == 200
            project = c.get("/v1/auth/tokens/current", headers=boot).json()["project"]["id"]
            r = c.post("/v1/users", headers=boot, json={
                "name": "root2", "password": "root2-password", "project_id": project,
                "role": "admin"})
            assert r.status_code == 201, r.text
            second = bearer(_login(c, "root2", "root2-password", project).json()["token"])
            admin_id = next(u["id"] for u in c.get("/v1/users", headers=second).json()
                            if u["name"] == "admin")
            assert c.delete(f"/v1/users/{admin_id}", headers=second).status_code == 204
            assert c.get("/v1/users", headers=boot).status_code == 401
        # A restart with the token still in the environment does not resurrect the admin.
        with TestClient(create_app(settings)) as c:
            r = c.get("/v1/users", headers=bearer(token))
            assert r.status_code == 401, r.text
            assert r.json()["code"] == "invalid_token"
            names = [u["name"] for u in c.get("/v1/users", headers=second).json()]
            assert names == ["root2"]
