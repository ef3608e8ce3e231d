"""``minicloud host evacuate``: a down host's servers rebuilt elsewhere, followed with --wait."""

from __future__ import annotations

import threading
import time
from datetime import timedelta

import httpx
from sqlalchemy import update

from api.config import Settings
from api.db import make_engine, utcnow
from api.models import Host
from tests.agent_factories import enroll_host, hold_silence, inventory, observe
from tests.cli.conftest import Mc, assert_readable_error, parse
from tests.conftest import ADMIN_TOKEN
from tests.factories import bearer, make_account, make_flavor, make_image, unique

ADMIN = bearer(ADMIN_TOKEN)


def test_host_evacuate_rebuilds_the_servers_of_a_down_host_and_waits(
    mc: Mc, http: httpx.Client, settings: Settings
) -> None:
    zone = unique("evac")
    acct = make_account(http, ADMIN, "member")
    flavor = make_flavor(http, ADMIN)["name"]
    image = make_image(http, acct.headers)["id"]
    dead = enroll_host(http, ADMIN, availability_zone=zone)
    assert http.put("/v1/agent/inventory", json=inventory(), headers=dead.headers).is_success
    assert http.post("/v1/agent/heartbeat", json={"observed": []},
                     headers=dead.headers).is_success
    r = http.post("/v1/servers", headers=acct.headers, json={
        "name": unique("vm"), "flavor": flavor, "image": image, "availability_zone": zone})
    assert r.status_code == 202, r.text
    sid = r.json()["id"]
    observe(http, dead.headers, sid, "running")
    other = enroll_host(http, ADMIN, availability_zone=zone)
    assert http.put("/v1/agent/inventory", json=inventory(), headers=other.headers).is_success
    assert http.post("/v1/agent/heartbeat", json={"observed": []},
                     headers=other.headers).is_success

    # A host that heartbeats is refused, readably.
    assert_readable_error(mc("host", "evacuate", other.name), "host_not_down")

    engine = make_engine(settings.effective_database_url)

    def long_ago() -> None:
        with engine.begin() as conn:  # its agent stopped long ago: down
            conn.execute(update(Host).where(Host.id == dead.id).values(
                last_heartbeat_at=utcnow() - timedelta(
                    seconds=settings.host_down_after_seconds + 5)))
    hold_silence(dead.id, long_ago)
    engine.dispose()

    def new_host_agent() -> None:
        # The other host's agent builds it once the server waits there, then reports it.
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            if http.get(f"/v1/servers/{sid}", headers=ADMIN).json()["task_state"] == \
                    "rebuilding":
                observe(http, other.headers, sid, "running")
                return
            time.sleep(0.2)

    agent = threading.Thread(target=new_host_agent)
    agent.start()
    body = parse(mc("--json", "host", "evacuate", dead.name, "--wait"))
    agent.join()
    assert [(s["server_id"], s["result"], s["target_host"], s["status"])
            for s in body["servers"]] == [(sid, "rebuilding", other.name, "ACTIVE")]
    assert (body["progress"]["done"], body["progress"]["rebuilding"]) == (1, 0)
    # The host shows it; nothing is left to move, so evacuating again moves nothing.
    shown = parse(mc("--json", "host", "show", dead.name))["evacuation"]
    assert (shown["servers"], shown["done"], shown["remaining"]) == (1, 1, 0)
    assert parse(mc("--json", "host", "evacuate", dead.name))["servers"] == []
