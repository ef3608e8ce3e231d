"""A fleet enrolling at once: 300 simulated hosts (bench/fleet.py, the agent's wire models over
real HTTP) enroll, put inventory and heartbeat together through real API processes (one on
SQLite, two on PostgreSQL) and all come up without a server error."""

from __future__ import annotations

import asyncio
from collections.abc import Callable

import pytest
from fastapi.testclient import TestClient

from bench.fleet import Fleet
from tests.conftest import ADMIN_TOKEN
from tests.db import backend
from tests.factories import unique

HOSTS = 300


@pytest.mark.slow
def test_300_hosts_enrolling_at_once_all_come_up_without_server_errors(
        live_api: Callable[[int], list[str]], client: TestClient,
        admin: dict[str, str]) -> None:
    urls = live_api(2 if backend() == "postgresql" else 1)
    fleet = Fleet(urls, ADMIN_TOKEN, prefix=unique("storm"))

    async def storm() -> None:
        try:
            await fleet.enroll(HOSTS)
        finally:
            await fleet.close()

    asyncio.run(storm())

    assert fleet.failed == []
    # Saturation is answered 503 with Retry-After (the client waits and retries); nothing
    # else of 500 and above, and no transport failure.
    assert {(kind, status) for (kind, status) in fleet.stats.calls
            if status >= 500 or status == 0} <= {
        (f"{k}:retry-after", 503) for k in ("mint-token", "enroll", "inventory", "heartbeat")}
    assert fleet.stats.server_errors == 0
    counts = fleet.stats.calls
    assert (counts[("enroll", 201)], counts[("inventory", 200)],
            counts[("heartbeat", 200)]) == (HOSTS, HOSTS, HOSTS)
    hosts = client.get("/v1/hosts", headers=admin).json()
    mine = [h for h in hosts if h["name"].startswith(fleet.prefix)]
    assert len(mine) == HOSTS
    assert {h["state"] for h in mine} == {"up"}
    # The session's database is shared: take the fleet out again, so that later tests' host
    # counts and scheduler snapshots are their own.
    for h in mine:
        assert client.delete(f"/v1/hosts/{h['id']}", headers=admin).status_code == 204
