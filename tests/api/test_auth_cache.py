"""Credentials an API process just answered from memory stop working at once when revoked.

Each test first uses the credential (so the process remembers whom it authenticates), then
changes it through the same API process and checks that the very next request sees the
change. The cross-process bound (``auth_cache_seconds``) is documented in docs/security.md.
"""

from __future__ import annotations

from fastapi.testclient import TestClient

from tests.factories import bearer, make_account, make_project


def _who(client: TestClient, headers: dict[str, str]) -> tuple[int, str | None]:
    r = client.get("/v1/auth/tokens/current", headers=headers)
    return r.status_code, r.json().get("role") if r.status_code == 200 else r.json()["code"]


def test_a_role_change_applies_to_the_next_request(client: TestClient,
                                                   admin: dict[str, str]) -> None:
    acct = make_account(client, admin, role="member")
    assert _who(client, acct.headers) == (200, "member")
    r = client.put(f"/v1/projects/{acct.project_id}/members/{acct.user_id}",
                   json={"role": "reader"}, headers=admin)
    assert r.status_code == 200, r.text
    assert _who(client, acct.headers) == (200, "reader")
    r = client.post("/v1/application-credentials", json={"name": "x"}, headers=acct.headers)
    assert (r.status_code, r.json()["code"]) == (403, "read_only_role")


def test_a_removed_role_ends_the_token_at_once(client: TestClient,
                                               admin: dict[str, str]) -> None:
    acct = make_account(client, admin)
    assert _who(client, acct.headers) == (200, "member")
    r = client.delete(f"/v1/projects/{acct.project_id}/members/{acct.user_id}", headers=admin)
    assert r.status_code == 204
    assert _who(client, acct.headers) == (401, "invalid_token")


def test_a_deleted_application_credential_is_refused_at_once(
        client: TestClient, admin: dict[str, str]) -> None:
    acct = make_account(client, admin)
    r = client.post("/v1/application-credentials", json={"name": "ci"}, headers=acct.headers)
    cred_id, secret = r.json()["id"], r.json()["secret"]
    assert _who(client, bearer(secret)) == (200, "member")
    r = client.delete(f"/v1/application-credentials/{cred_id}", headers=acct.headers)
    assert r.status_code == 204
    assert _who(client, bearer(secret)) == (401, "invalid_token")


def test_a_deleted_user_is_refused_at_once(client: TestClient, admin: dict[str, str]) -> None:
    acct = make_account(client, admin)
    assert _who(client, acct.headers) == (200, "member")
    assert client.delete(f"/v1/users/{acct.user_id}", headers=admin).status_code == 204
    assert _who(client, acct.headers) == (401, "invalid_token")


def test_a_logout_is_refused_at_once_and_other_tokens_still_work(
        client: TestClient, admin: dict[str, str]) -> None:
    project = make_project(client, admin)
    a = make_account(client, admin, project_id=project["id"])
    b = make_account(client, admin, project_id=project["id"])
    assert _who(client, a.headers) == (200, "member")
    assert _who(client, b.headers) == (200, "member")
    assert client.delete("/v1/auth/tokens/current", headers=a.headers).status_code == 204
    assert _who(client, a.headers) == (401, "invalid_token")
    assert _who(client, b.headers) == (200, "member")
