"""A fleet enrolling at once: 300 simulated hosts (bench/fleet.py, the agent's wire models over
real HTTP) enroll, put inventory and heartbeat together through real API processes (one on
SQLite, two on PostgreSQL) and all come up without a server error; then, with every host's
long-poll waiting, a create reaches its agent while no waiting agent makes the API query the
database (the processes' statement counters on ``/metrics``)."""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable

import httpx
import pytest
from fastapi.testclient import TestClient

from bench.fleet import Fleet
from tests.catalog_rows import make_image_row
from tests.conftest import ADMIN_TOKEN
from tests.db import backend
from tests.factories import make_account, unique
from tests.scrape import LONG_POLL, Samples, long_poll_statements, scrape, total, value

HOSTS = 300
# What one answered long-poll costs, with the next poll's check: authentication (2) and the
# cursor (2) before waiting, then authentication, cursor and the servers (5) for the answer,
# with room to spare. A waiting poll costs nothing.
STATEMENTS_PER_ANSWER = 12


def _sum(samples: list[Samples], reader: Callable[[Samples], float]) -> float:
    return sum(reader(s) for s in samples)


def _answers(s: Samples) -> float:
    return total(s, "minicloud_http_requests_total", route=LONG_POLL)


def _waiting(s: Samples) -> float:
    return value(s, "minicloud_agent_long_polls_waiting")


def _notified(s: Samples) -> float:
    return value(s, "minicloud_agent_long_polls_ended_total", how="notified")


@pytest.mark.slow
def test_300_hosts_enrolling_at_once_all_come_up_and_a_create_is_pushed_to_its_agent(
        live_api: Callable[[int], list[str]], client: TestClient,
        admin: dict[str, str], database_url: str) -> None:
    urls = live_api(2 if backend() == "postgresql" else 1)
    zone = unique("az")
    fleet = Fleet(urls, ADMIN_TOKEN, prefix=unique("storm"), long_poll_wait=30,
                  availability_zone=zone)
    acct = make_account(client, admin)
    image = make_image_row(database_url, acct.project_id)
    seen: dict[str, object] = {}

    async def scrape_all() -> list[Samples]:
        return [await asyncio.to_thread(scrape, url) for url in urls]

    async def polls_waiting() -> list[Samples]:
        # At least half of the fleet's polls wait; the others are being answered (a shared,
        # loaded machine answers slowly) and are accounted for below.
        deadline = time.monotonic() + 120
        while True:
            samples = await scrape_all()
            if _sum(samples, _waiting) >= HOSTS // 2:
                return samples
            assert time.monotonic() < deadline, "the fleet's long-polls never waited"
            await asyncio.sleep(0.2)

    async def storm_then_create() -> None:
        try:
            await fleet.enroll(HOSTS)
            fleet.start()
            before = await polls_waiting()
            await asyncio.sleep(1.0)  # room for polling agents to show themselves
            async with httpx.AsyncClient(timeout=30) as http:
                r = await http.post(f"{urls[-1]}/v1/servers", headers=acct.headers, json={
                    "name": unique("vm"), "flavor": "tiny", "image": image,
                    "availability_zone": zone})
            assert r.status_code == 202, r.text
            server_id = r.json()["id"]
            deadline = time.monotonic() + 120
            while not any(server_id in h.reported for h in fleet.hosts):
                assert fleet.failed == []
                assert time.monotonic() < deadline, "the create never reached its agent"
                await asyncio.sleep(0.05)
            seen["server"] = server_id
            after = await polls_waiting()
            seen["before"], seen["after"] = before, after
            async with httpx.AsyncClient(timeout=30) as http:  # leave no server behind
                r = await http.delete(f"{urls[0]}/v1/servers/{server_id}",
                                      headers=acct.headers)
                assert r.status_code == 202, r.text  # its agent confirms the delete
                while (await http.get(f"{urls[0]}/v1/servers/{server_id}",
                                      headers=acct.headers)).status_code != 404:
                    assert time.monotonic() < deadline + 120, "the delete never finished"
                    await asyncio.sleep(0.1)
        finally:
            await fleet.close()

    asyncio.run(storm_then_create())

    assert fleet.failed == []
    # Saturation is answered 503 with Retry-After (the client waits and retries); nothing
    # else of 500 and above, and no transport failure.
    assert {(kind, status) for (kind, status) in fleet.stats.calls
            if status >= 500 or status == 0} <= {
        (f"{k}:retry-after", 503) for k in ("mint-token", "enroll", "inventory", "heartbeat")}
    assert fleet.stats.server_errors == 0
    counts = fleet.stats.calls
    assert (counts[("enroll", 201)], counts[("inventory", 200)]) == (HOSTS, HOSTS)
    assert counts[("heartbeat", 200)] >= HOSTS
    hosts = client.get("/v1/hosts", headers=admin).json()
    mine = [h for h in hosts if h["name"].startswith(fleet.prefix)]
    assert len(mine) == HOSTS
    assert {h["state"] for h in mine} == {"up"}
    # The create woke its agent's poll. Between the two scrapes the long-poll route sent only
    # what the polls answered meanwhile (and those not yet waiting at the first scrape) cost:
    # every waiting agent cost nothing, no agent polled the database.
    before, after = seen["before"], seen["after"]
    assert isinstance(before, list) and isinstance(after, list)
    assert _sum(after, _notified) - _sum(before, _notified) >= 1
    answered = _sum(after, _answers) - _sum(before, _answers)
    not_yet_waiting = HOSTS - _sum(before, _waiting)
    sent = _sum(after, long_poll_statements) - _sum(before, long_poll_statements)
    assert answered >= 1 and sent > 0
    assert sent <= STATEMENTS_PER_ANSWER * (answered + not_yet_waiting), (
        sent, answered, not_yet_waiting)
    # The session's database is shared: take the fleet out again, so that later tests' host
    # counts and scheduler snapshots are their own.
    for h in mine:
        assert client.delete(f"/v1/hosts/{h['id']}", headers=admin).status_code == 204
