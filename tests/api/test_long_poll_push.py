"""Push, not poll: a waiting agent long-poll runs no SQL, and a create wakes it, also when the
create is made through another API process (PostgreSQL: two real processes, one database).

The evidence is what each process publishes on ``/metrics``: the SQL statements it sent, by
route, and how its long-polls ended (``notified`` by a committed change, or ``timeout``).
"""

from __future__ import annotations

import threading
import time
from collections.abc import Callable

import httpx
from fastapi.testclient import TestClient

from tests.agent_factories import enroll_host, inventory
from tests.catalog_rows import make_image_row
from tests.db import backend
from tests.factories import make_account, unique
from tests.scrape import LONG_POLL as POLL
from tests.scrape import Samples, scrape, value
from tests.scrape import long_poll_statements as statements


def wait_until_polls_wait(url: str, count: int) -> Samples:
    """Scrape until the process reports ``count`` waiting long-polls (at most 30 s)."""
    deadline = time.monotonic() + 30
    while True:
        samples = scrape(url)
        if value(samples, "minicloud_agent_long_polls_waiting") >= count:
            return samples
        assert time.monotonic() < deadline, "the long-poll never started waiting"
        time.sleep(0.05)


def test_a_waiting_long_poll_runs_no_sql_and_a_create_through_another_process_wakes_it(
        client: TestClient, admin: dict[str, str], database_url: str,
        live_api: Callable[[int], list[str]]) -> None:
    # SQLite runs one API process; PostgreSQL two, the create going through the other one.
    urls = live_api(2 if backend() == "postgresql" else 1)
    waiting_on, create_on = urls[0], urls[-1]
    zone = unique("az")
    host = enroll_host(client, admin, availability_zone=zone)
    r = client.put("/v1/agent/inventory", headers=host.headers, json=inventory())
    assert r.status_code == 200, r.text
    r = client.post("/v1/agent/heartbeat", headers=host.headers, json={"observed": []})
    assert r.status_code == 200, r.text
    cursor = client.get(POLL, headers=host.headers).json()["cursor"]
    acct = make_account(client, admin)
    image = make_image_row(database_url, acct.project_id)

    answer: list[httpx.Response] = []

    def poll() -> None:  # the longest wait: only a wake-up ends it early
        with httpx.Client(base_url=waiting_on, timeout=90) as c:
            answer.append(c.get(POLL, headers=host.headers,
                                params={"since": cursor, "wait": 30}))

    t = threading.Thread(target=poll)
    t.start()
    waiting = wait_until_polls_wait(waiting_on, 1)
    time.sleep(1.0)  # room for a polling implementation to show itself (every 150 ms before)
    still = scrape(waiting_on)
    assert value(still, "minicloud_agent_long_polls_waiting") == 1
    assert statements(still) == statements(waiting), "a waiting long-poll ran SQL"

    r = httpx.post(f"{create_on}/v1/servers", headers=acct.headers, timeout=30, json={
        "name": unique("vm"), "flavor": "tiny", "image": image, "availability_zone": zone})
    assert r.status_code == 202, r.text
    t.join()
    assert answer[0].status_code == 200, answer[0].text
    body = answer[0].json()
    assert body["cursor"] != cursor
    assert [s["server_id"] for s in body["servers"]] == [r.json()["id"]]
    after = scrape(waiting_on)
    ended = {how: value(after, "minicloud_agent_long_polls_ended_total", how=how)
             - value(still, "minicloud_agent_long_polls_ended_total", how=how)
             for how in ("notified", "timeout", "disconnected")}
    assert ended == {"notified": 1, "timeout": 0, "disconnected": 0}
