"""Each API process places servers from its own copy of the hosts (``api.scheduler.snapshot``).
It follows its own claims at their commit, and on PostgreSQL the claims of the other API
processes from their notifications: a create after creates through other processes reads the
one-row fingerprint and nothing more. The evidence is each process's ``/metrics``.
"""

from __future__ import annotations

import time
from collections.abc import Callable

import httpx
from fastapi.testclient import TestClient

from tests.agent_factories import enroll_host, inventory
from tests.catalog_rows import make_image_row
from tests.db import backend
from tests.factories import make_account, unique
from tests.scrape import Samples, scrape, value

READS = "minicloud_scheduler_snapshot_reads_total"
FOLLOWED = "minicloud_scheduler_claims_followed_total"


def reads(before: Samples, after: Samples) -> dict[str, float]:
    """How the process's loads of its copy went between two scrapes."""
    return {how: value(after, READS, how=how) - value(before, READS, how=how)
            for how in ("unchanged", "compared", "generations", "liveness")}


def test_creates_through_other_processes_cost_this_process_no_re_read(
        client: TestClient, admin: dict[str, str], database_url: str,
        live_api: Callable[[int], list[str]]) -> None:
    # PostgreSQL: two API processes on one database; SQLite runs one (its own claims only).
    urls = live_api(2 if backend() == "postgresql" else 1)
    ours, theirs = urls[0], urls[-1]
    zone = unique("az")
    hosts = [enroll_host(client, admin, availability_zone=zone) for _ in range(2)]
    for host in hosts:
        r = client.put("/v1/agent/inventory", headers=host.headers, json=inventory())
        assert r.status_code == 200, r.text
        r = client.post("/v1/agent/heartbeat", headers=host.headers, json={"observed": []})
        assert r.status_code == 200, r.text
    acct = make_account(client, admin)
    image = make_image_row(database_url, acct.project_id)

    def create(url: str) -> str:
        r = httpx.post(f"{url}/v1/servers", headers=acct.headers, timeout=30, json={
            "name": unique("vm"), "flavor": "tiny", "image": image, "availability_zone": zone})
        assert r.status_code == 202, r.text
        return str(r.json()["id"])

    create(ours)  # our process reads its copy of the pool
    start = scrape(ours)
    for _ in range(3):
        create(theirs)  # SQLite: the same process
    if theirs != ours:  # the other process's claims reach ours through their notifications
        deadline = time.monotonic() + 30
        while value(scrape(ours), FOLLOWED) - value(start, FOLLOWED) < 3:
            assert time.monotonic() < deadline, "the other process's claims never arrived"
            time.sleep(0.05)
    before = scrape(ours)
    created = create(ours)
    after = scrape(ours)
    assert reads(before, after) in (
        {"unchanged": 1, "compared": 0, "generations": 0, "liveness": 0},
        # At most once a minute every host's heartbeat is read again, whatever else moved.
        {"unchanged": 0, "compared": 0, "generations": 0, "liveness": 1})
    r = httpx.get(f"{ours}/v1/servers/{created}", headers=admin, timeout=30)
    assert r.json()["host"] in {h.name for h in hosts}
