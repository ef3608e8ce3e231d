"""Bad input across the WHOLE API (issue 2, acceptance 5).

Operations and their body models are enumerated by introspection (tests/api/route_table.py):
every JSON body gets malformed JSON, the wrong JSON type, wrong field types, unknown fields,
10 KB strings, control characters and absurd numbers; every path parameter gets a NUL byte,
300 characters and dot segments. Each answer is a 4xx problem document with a stable code and
a request id, never a 500, and nothing is written.
"""

from __future__ import annotations

import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel
from sqlalchemy import func, select

from api.db import Base
from tests.agent_factories import db, observe
from tests.api.route_table import PUBLIC, Operation, operations
from tests.factories import IMAGE_BYTES, Account, make_account, make_image, unique


@dataclass
class Ids:
    """Real objects to name in paths, and who may reach each operation's handler."""

    member: Account
    admin: dict[str, str]
    host: dict[str, str]
    values: dict[str, str]

    def headers(self, op: Operation) -> dict[str, str]:
        """Credentials that pass ``op``'s guard (admin for user operations: sees everything)."""
        return self.host if op.guard == "host" else self.admin


@pytest.fixture(scope="module")
def ops(client: TestClient) -> list[Operation]:
    """Every operation of the app under test."""
    return operations(client.app)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def ids(client: TestClient, admin: dict[str, str], _pool_host: dict[str, str]) -> Ids:
    """A member's project with a running server, an image and a group."""
    r = client.post("/v1/agent/heartbeat", headers=_pool_host, json={"observed": []})
    assert r.status_code == 200, r.text
    member = make_account(client, admin, "member")
    image = make_image(client, member.headers)
    r = client.post("/v1/server-groups", headers=member.headers,
                    json={"name": unique("grp"), "policy": "affinity"})
    assert r.status_code == 201, r.text
    group_id = r.json()["id"]
    r = client.post("/v1/servers", headers=member.headers,
                    json={"name": unique("vm"), "flavor": "tiny", "image": image["id"]})
    assert r.status_code == 202, r.text
    server_id = r.json()["id"]
    observe(client, _pool_host, server_id, "running")
    hosts = client.get("/v1/hosts", headers=admin).json()
    host_id = next(h["id"] for h in hosts if h["name"] == "pool-host")
    flavor_id = client.get("/v1/flavors/tiny", headers=admin).json()["id"]
    values = {"server_id": server_id, "image_id": image["id"], "ref": image["id"],
              "group_id": group_id, "project_id": member.project_id, "user_id": member.user_id,
              "flavor_id": flavor_id, "host_id": host_id, "cred_id": unique("cred"),
              "period": "2026-01", "card_id": unique("card")}
    return Ids(member, admin, _pool_host, values)


def _row_counts(client: TestClient) -> dict[str, int]:
    """Rows in every table (the proof that a refused request wrote nothing)."""
    with db(client) as s:
        return {t.name: s.scalar(select(func.count()).select_from(t)) or 0
                for t in Base.metadata.sorted_tables}


def _assert_problem(r: Any, context: str, statuses: tuple[int, ...] = ()) -> None:
    assert 400 <= r.status_code < 500, f"{context}: {r.status_code} {r.text[:300]}"
    if statuses:
        assert r.status_code in statuses, f"{context}: {r.status_code} {r.text[:300]}"
    assert r.headers["content-type"].startswith("application/problem+json"), context
    doc = r.json()
    assert doc["code"] and doc["code"].replace("_", "").isalpha(), (context, doc)
    assert doc["request_id"] and doc["status"] == r.status_code, (context, doc)


# -- path parameters -------------------------------------------------------------------------

BAD_PATH_VALUES = {
    "nul": "a%00b",
    "long": "x" * 300,
    "dots": "..",
    "dot_segments": "..%2F..%2Fetc%2Fpasswd",
    "percent": "%25",
    "unicode": "%C3%A9%E2%80%AE",
    "space": "a%20b",
}

# Valid bodies, so the bad path value (and not the body) is what the handler sees.
VALID_BODY: dict[tuple[str, str], Any] = {
    ("PUT", "/v1/projects/{project_id}/members/{user_id}"): {"role": "reader"},
    ("POST", "/v1/servers/{server_id}/actions"): {"action": "stop"},
    ("POST", "/v1/agent/servers/{server_id}/observations"): {
        "state": "running", "seen_at": "2026-01-01T00:00:00Z", "idempotency_key": "k-1"},
    ("PATCH", "/v1/hosts/{host_id}"): {},
    ("PUT", "/v1/quotas/{project_id}"): {},
}
RAW_BODY = {("PUT", "/v1/images/{image_id}/file"), ("PUT", "/v1/agent/servers/{server_id}/console")}


def _send(client: TestClient, op: Operation, url: str, headers: dict[str, str]) -> Any:
    key = (op.method, op.path)
    if key in RAW_BODY:
        return client.request(op.method, url, headers=headers, content=IMAGE_BYTES["raw"])
    if key in VALID_BODY:
        return client.request(op.method, url, headers=headers, json=VALID_BODY[key])
    return client.request(op.method, url, headers=headers)


def test_every_path_parameter_refuses_nul_long_and_dotted_values(
        client: TestClient, ops: list[Operation], ids: Ids) -> None:
    with_params = [op for op in ops if op.params]
    assert len(with_params) > 30
    before = _row_counts(client)
    failures = []
    for op in with_params:
        for param in op.params:
            for label, bad in BAD_PATH_VALUES.items():
                url = op.url(ids.values | {param: bad})
                r = _send(client, op, url, ids.headers(op))
                try:
                    _assert_problem(r, f"{op} {param}={label}")
                except AssertionError as exc:
                    failures.append(str(exc))
    assert not failures, "\n".join(failures)
    after = _row_counts(client)
    # Refused requests write nothing; only the audit-free counters of reads may not move.
    assert after == before


# -- JSON bodies -----------------------------------------------------------------------------


def _body_ops(ops: list[Operation]) -> list[Operation]:
    return [op for op in ops if op.body_model is not None]
