"""Identity through HTTP: login, roles, application credentials, admin-only endpoints."""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.factories import bearer, make_account, unique


def test_login_returns_a_project_scoped_token(client: TestClient, admin: dict[str, str]) -> None:
    acct = make_account(client, admin, role="member")
    r = client.get("/v1/auth/tokens/current", headers=acct.headers)
    assert r.status_code == 200
    body = r.json()
    assert body["project"]["id"] == acct.project_id
    assert body["role"] == "member"
    assert body["credential"] == "token"


def test_wrong_password_is_401_problem(client: TestClient, admin: dict[str, str]) -> None:
    acct = make_account(client, admin)
    r = client.post("/v1/auth/tokens", json={"user": acct.user_name, "password": "nope",
                                             "project": acct.project_id})
    assert r.status_code == 401
    assert r.headers["content-type"] == "application/problem+json"
    assert r.json()["code"] == "invalid_credentials"


def test_missing_and_unknown_tokens_are_401(client: TestClient) -> None:
    assert client.get("/v1/projects").json()["code"] == "missing_token"
    r = client.get("/v1/projects", headers=bearer("mct_not-a-real-token"))
    assert (r.status_code, r.json()["code"]) == (401, "invalid_token")


def test_logout_revokes_the_token(client: TestClient, admin: dict[str, str]) -> None:
    acct = make_account(client, admin)
    assert client.delete("/v1/auth/tokens/current", headers=acct.headers).status_code == 204
    assert client.get("/v1/auth/tokens/current", headers=acct.headers).status_code == 401


def test_application_credential_secret_is_shown_once_and_works(
    client: TestClient, admin: dict[str, str]
) -> None:
    acct = make_account(client, admin)
    r = client.post("/v1/application-credentials", json={"name": "ci"}, headers=acct.headers)
    assert r.status_code == 201
    secret = r.json()["secret"]
    listed = client.get("/v1/application-credentials", headers=acct.headers).json()
    assert [c["secret"] for c in listed] == [None]
    who = client.get("/v1/auth/tokens/current", headers=bearer(secret)).json()
    assert who["credential"] == "application_credential"
    assert who["project"]["id"] == acct.project_id
    dup = client.post("/v1/application-credentials", json={"name": "ci"}, headers=acct.headers)
    assert (dup.status_code, dup.json()["code"]) == (409, "credential_exists")


def test_member_cannot_see_other_projects(client: TestClient, admin: dict[str, str]) -> None:
    a = make_account(client, admin)
    b = make_account(client, admin)
    assert [p["id"] for p in client.get("/v1/projects", headers=a.headers).json()] == [a.project_id]
    r = client.get(f"/v1/projects/{b.project_id}", headers=a.headers)
    assert (r.status_code, r.json()["code"]) == (404, "project_not_found")


def test_admin_endpoints_are_403_for_members_and_readers(
    client: TestClient, admin: dict[str, str]
) -> None:
    for role in ("member", "reader"):
        acct = make_account(client, admin, role=role)
        for method, path, body in [
            ("POST", "/v1/projects", {"name": unique("p")}),
            ("GET", "/v1/users", None),
            ("POST", "/v1/users", {"name": unique("u"), "password": "longenough"}),
            ("PUT", f"/v1/projects/{acct.project_id}/members/{acct.user_id}", {"role": "admin"}),
        ]:
            r = client.request(method, path, json=body, headers=acct.headers)
            assert (r.status_code, r.json()["code"]) == (403, "admin_required"), (role, path)


def test_reader_cannot_create_credentials(client: TestClient, admin: dict[str, str]) -> None:
    reader = make_account(client, admin, role="reader")
    r = client.post("/v1/application-credentials", json={"name": "x"}, headers=reader.headers)
    assert (r.status_code, r.json()["code"]) == (403, "read_only_role")


def test_duplicate_project_is_409_and_bad_names_are_422(
    client: TestClient, admin: dict[str, str]
) -> None:
    name = unique("dup")
    assert client.post("/v1/projects", json={"name": name}, headers=admin).status_code == 201
    r = client.post("/v1/projects", json={"name": name}, headers=admin)
    assert (r.status_code, r.json()["code"]) == (409, "project_exists")
    for bad in ["", "x" * 10_000, "a\x00b", "../etc", 42]:
        r = client.post("/v1/projects", json={"name": bad}, headers=admin)
        assert (r.status_code, r.json()["code"]) == (422, "invalid_input"), bad


def test_health_and_readiness(client: TestClient) -> None:
    assert client.get("/healthz").json() == {"status": "ok"}
    assert client.get("/readyz").json() == {"status": "ready"}
