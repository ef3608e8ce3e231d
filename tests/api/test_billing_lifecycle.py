"""Billing follows the server lifecycle, end to end through HTTP (issue 5, acceptance 2).

Servers are created through ``POST /v1/servers``; the tests act as the host's agent and report
what it saw, each report carrying a ``seen_at`` the test chooses. The ledger bills the agent's
times, so the expected seconds are exact integers computed from those chosen times.

Why the tests wait: the API caps an agent's ``seen_at`` at its own clock and bills nothing
before the server's ``created`` entry (the real creation time). A timeline of whole seconds
after the creation therefore needs the clock to have passed them; each test waits until its
chosen times are in the past (a few seconds), then reports them. No assertion depends on how
fast anything runs: every expected number comes from the chosen times and from the times the
API recorded (read back from the ledger).
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timedelta
from decimal import Decimal
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.agent import liveness
from api.config import Settings
from api.main import create_app
from api.models import Host, Server
from api.servers.lifecycle import force_delete
from api.usage import host_monitor
from api.usage.rules import Entry, epoch, from_epoch
from tests.agent_factories import enroll_host, inventory, observe
from tests.catalog_rows import make_image_row
from tests.factories import Account, make_account, unique
from tests.usage.test_rules_properties import brute_force

pytestmark = pytest.mark.usefixtures("pool")


def iso(second: int) -> str:
    return from_epoch(second).isoformat()


def wait_until(second: int) -> None:
    """Sleep until the clock has passed ``second`` (so it may be reported as seen)."""
    while time.time() < second:
        time.sleep(0.05)


def create(client: TestClient, acct: Account, database_url: str, flavor: str = "small",
           **body: Any) -> tuple[str, int]:
    """A server through the API; returns its id and its creation second."""
    image = make_image_row(database_url, acct.project_id)
    r = client.post("/v1/servers", headers=acct.headers,
                    json={"name": unique("vm"), "flavor": flavor, "image": image, **body})
    assert r.status_code == 202, r.text
    server = r.json()
    return server["id"], epoch(datetime.fromisoformat(server["created_at"]))


def act(client: TestClient, acct: Account, sid: str, action: str, **body: Any) -> None:
    r = client.post(f"/v1/servers/{sid}/actions", headers=acct.headers,
                    json={"action": action, **body})
    assert r.status_code == 202, r.text


def status(client: TestClient, acct: Account, sid: str) -> str:
    r = client.get(f"/v1/servers/{sid}", headers=acct.headers)
    assert r.status_code == 200, r.text
    value: str = r.json()["status"]
    return value


def status_gone(client: TestClient, acct: Account, sid: str) -> bool:
    """True when the server is deleted (hidden from its tenant)."""
    code: int = client.get(f"/v1/servers/{sid}", headers=acct.headers).status_code
    return code == 404


def seen(client: TestClient, agent: dict[str, str], sid: str, state: str, second: int,
         **extra: Any) -> dict[str, Any]:
    """Report that the agent saw ``state`` at ``second``.

    The agent heartbeats first, as a live agent does all along: the host monitor never takes
    the host for down, however slowly the test runs.
    """
    assert client.post("/v1/agent/heartbeat", headers=agent, json={"observed": []}).is_success
    return observe(client, agent, sid, state, seen_at=iso(second), **extra)


def server_usage(client: TestClient, acct: Account, sid: str,
                 **window: int) -> dict[str, Any]:
    params = {k: iso(v) for k, v in window.items()}
    r = client.get(f"/v1/usage/servers/{sid}", params=params, headers=acct.headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def kinds(usage: dict[str, Any]) -> list[tuple[str, int]]:
    """The server's ledger as (kind, second) pairs, in billing order."""
    return [(e["kind"], epoch(datetime.fromisoformat(e["at"]))) for e in usage["entries"]]


def report_line(client: TestClient, acct: Account, sid: str, start: int,
                end: int) -> dict[str, Any]:
    """The server's line of its project's report for [start, end)."""
    r = client.get("/v1/usage", headers=acct.headers,
                   params={"start": iso(start), "end": iso(end), "group_by": "server"})
    assert r.status_code == 200, r.text
    [block] = r.json()["projects"]
    [line] = [s for s in block["servers"] if s["server_id"] == sid]
    assert line == {**line, "running_seconds": block["running_seconds"]}  # the only server
    result: dict[str, Any] = line
    return result


def seconds(line: dict[str, Any]) -> tuple[int, int, int, int, int]:
    """(server, running, vCPU, RAM MiB, disk GiB) seconds of a usage line."""
    return (line["server_seconds"], line["running_seconds"], line["vcpu_seconds"],
            line["ram_mib_seconds"], line["disk_gib_seconds"])


def rate_card(client: TestClient, admin: dict[str, str], earliest: int,
              vcpu_hour: str, ram_gib_hour: str, disk_gib_hour: str) -> int:
    """Add a card in force from ``earliest`` or, if that passed meanwhile, a later second.

    Returns the card's first second. (A card may not start in the past, and how long the
    request takes is not the test's business.)
    """
    while True:
        valid_from = max(earliest, int(time.time()) + 2)
        r = client.post("/v1/rates", headers=admin, json={
            "valid_from": iso(valid_from), "currency": "EUR", "vcpu_hour": vcpu_hour,
            "ram_gib_hour": ram_gib_hour, "disk_gib_hour": disk_gib_hour})
        if r.status_code == 201:
            return valid_from
        assert r.json()["code"] == "valid_from_in_past", r.text


def db(client: TestClient) -> Session:
    factory: sessionmaker[Session] = client.app.state.sessionmaker  # type: ignore[attr-defined]
    return factory()


# --- acceptance 2: run, stop, start, resize, delete -> exact seconds and the cost in force

def test_a_lifecycle_bills_the_observed_seconds_at_the_prices_in_force(
    client: TestClient, admin: dict[str, str], pool: dict[str, str], settings: Settings,
    database_url: str,
) -> None:
    minimum = settings.billing_minimum_run_seconds
    assert minimum == 60  # the expected numbers below are written for the default
    acct = make_account(client, admin)
    # Card 1 from the next second on; prices chosen so one second costs an exact decimal:
    # vCPU 0.036/h = 0.00001/s, RAM 0.0072 per GiB-h = 0.000002/GiB-s, disk 0.00036 per
    # GiB-h = 0.0000001/GiB-s. Card 2 doubles every price.
    wait_until(rate_card(client, admin, 0, "0.036", "0.0072", "0.00036"))
    sid, c = create(client, acct, database_url, flavor="small")  # 1 vCPU, 2 GiB, 20 GiB
    # Card 2 from k >= c+5 on; run 2 straddles it.
    k = rate_card(client, admin, c + 5, "0.072", "0.0144", "0.00072")
    wait_until(k + 3)

    seen(client, pool, sid, "running", c + 1)
    assert status(client, acct, sid) == "ACTIVE"
    act(client, acct, sid, "stop")
    seen(client, pool, sid, "shutoff", c + 3)
    act(client, acct, sid, "start")
    seen(client, pool, sid, "running", k - 1)
    act(client, acct, sid, "stop")
    seen(client, pool, sid, "shutoff", k + 2)
    # Resize to medium (2 vCPU, 4 GiB, 40 GiB): billed from the API's time r of the request.
    act(client, acct, sid, "resize", flavor="medium")
    r = next(at for kind, at in kinds(server_usage(client, acct, sid)) if kind == "resized")
    desired = client.get("/v1/agent/servers", headers=pool).json()["servers"]
    op = next(d["operation"] for d in desired if d["server_id"] == sid)
    assert op["kind"] == "resize"
    seen(client, pool, sid, "shutoff", r,
         operation={"operation_id": op["id"], "result": "success"})
    act(client, acct, sid, "start")
    wait_until(r + 2)
    seen(client, pool, sid, "running", r + 1)
    assert client.delete(f"/v1/servers/{sid}", headers=acct.headers).status_code == 202
    seen(client, pool, sid, "absent", r + 2)
    assert status_gone(client, acct, sid)

    usage = server_usage(client, acct, sid, start=c - 60, end=c + 3600)
    assert kinds(usage) == [("created", c), ("running", c + 1), ("stopped", c + 3),
                            ("running", k - 1), ("stopped", k + 2), ("resized", r),
                            ("running", r + 1), ("deleted", r + 2)]
    assert usage["state"] == "deleted"
    # Runs [c+1, c+3) 2 s, [k-1, k+2) 3 s (small), [r+1, r+2) 1 s (medium, ended by the
    # delete): each is billed the 60 s minimum. Disk: [c, r) at 20 GiB, [r, r+2) at 40 GiB.
    expected = (r + 2 - c, 180, 60 + 60 + 60 * 2, (60 + 60) * 2048 + 60 * 4096,
                (r - c) * 20 + 2 * 40)
    assert seconds(usage) == expected
    line = report_line(client, acct, sid, c - 60, c + 3600)
    assert seconds(line) == expected
    # Cost, per second. Running: small (1 vCPU + 2 GiB) 0.000014 under card 1, 0.000028
    # under card 2; medium (2 vCPU + 4 GiB) 0.000056 under card 2. Disk: 20 GiB 0.000002
    # (card 1), 0.000004 (card 2); 40 GiB 0.000008 (card 2). Card 2 starts at k.
    small = {1: Decimal("0.000014"), 2: Decimal("0.000028")}
    medium = Decimal("0.000056")
    disk20 = {1: Decimal("0.000002"), 2: Decimal("0.000004")}
    disk40 = Decimal("0.000008")
    cost = (small[1] * (2 + 58)            # run 1 and its minimum extra (at c+3)
            + small[1] * 1 + small[2] * 2  # run 2: [k-1, k) card 1, [k, k+2) card 2
            + small[2] * 57                # run 2's extra, at its end k+2
            + medium * (1 + 59)            # run 3 after the resize, and its extra (at r+2)
            + disk20[1] * (k - c) + disk20[2] * (r - k) + disk40 * 2)
    assert Decimal(line["cost"]) == cost

    # Windows cut anywhere add up; a run's minimum extra lands in the second the run ended.
    assert seconds(report_line(client, acct, sid, c + 1, c + 3)) == (2, 2, 2, 4096, 40)
    assert seconds(report_line(client, acct, sid, c + 3, c + 4))[1] == 58
    assert seconds(report_line(client, acct, sid, c + 4, k + 3))[1] == 3 + 57
    assert seconds(report_line(client, acct, sid, r, r + 60)) == (
        2, 60, 120, 60 * 4096, 80)


def test_retried_and_repeated_reports_change_nothing(
    client: TestClient, admin: dict[str, str], pool: dict[str, str], database_url: str,
) -> None:
    acct = make_account(client, admin)
    sid, c = create(client, acct, database_url)
    wait_until(c + 3)
    body = {"state": "running", "seen_at": iso(c + 1), "idempotency_key": unique("obs")}
    url = f"/v1/agent/servers/{sid}/observations"
    assert client.post(url, headers=pool, json=body).json()["applied"] is True
    before = server_usage(client, acct, sid, start=c, end=c + 3)
    # The same report again (a retry with the same key), then the heartbeat's periodic
    # "still running", at the same and at a later time.
    assert client.post(url, headers=pool, json=body).json()["applied"] is False
    for at in (c + 1, c + 2):
        r = client.post("/v1/agent/heartbeat", headers=pool, json={"observed": [
            {"server_id": sid, "state": "running", "seen_at": iso(at)}]})
        assert r.status_code == 200, r.text
    after = server_usage(client, acct, sid, start=c, end=c + 3)
    assert after == before
    assert kinds(after) == [("created", c), ("running", c + 1)]
    assert seconds(after) == (3, 2, 2, 2 * 2048, 3 * 20)


def test_a_guest_that_powers_itself_off_stops_compute_billing_when_seen(
    client: TestClient, admin: dict[str, str], pool: dict[str, str], database_url: str,
) -> None:
    acct = make_account(client, admin)
    sid, c = create(client, acct, database_url)
    wait_until(c + 4)
    seen(client, pool, sid, "running", c + 1)
    # Nobody asked for a stop: the guest shut down from inside (ACTIVE, no task).
    seen(client, pool, sid, "shutoff", c + 3)
    assert status(client, acct, sid) == "SHUTOFF"
    usage = server_usage(client, acct, sid, start=c, end=c + 4)
    assert kinds(usage)[-1] == ("stopped", c + 3)
    # Running [c+1, c+3) = 2 s, plus the minimum's 58 s at c+3; disk goes on while stopped.
    assert seconds(usage) == (4, 60, 60, 60 * 2048, 4 * 20)


def test_a_crashed_guest_stops_compute_billing(
    client: TestClient, admin: dict[str, str], pool: dict[str, str], database_url: str,
) -> None:
    acct = make_account(client, admin)
    sid, c = create(client, acct, database_url)
    wait_until(c + 3)
    seen(client, pool, sid, "running", c + 1)
    seen(client, pool, sid, "error", c + 2)  # libvirt said "crashed": no status change
    assert status(client, acct, sid) == "ACTIVE"
    assert kinds(server_usage(client, acct, sid))[-1] == ("stopped", c + 2)
    # The agent restarts it: billing resumes with a new run.
    seen(client, pool, sid, "running", c + 3)
    assert kinds(server_usage(client, acct, sid))[-1] == ("running", c + 3)


def test_a_reboot_keeps_billing_without_a_new_run(
    client: TestClient, admin: dict[str, str], pool: dict[str, str], database_url: str,
) -> None:
    acct = make_account(client, admin)
    sid, c = create(client, acct, database_url)
    wait_until(c + 4)
    seen(client, pool, sid, "running", c + 1)
    act(client, acct, sid, "reboot", type="hard")
    desired = client.get("/v1/agent/servers", headers=pool).json()["servers"]
    op = next(d["operation"] for d in desired if d["server_id"] == sid)
    assert (op["kind"], op["params"]) == ("reboot", {"type": "hard"})
    # Mid-reboot the domain is briefly off; then the agent reports the reboot done.
    r = client.post("/v1/agent/heartbeat", headers=pool, json={"observed": [
        {"server_id": sid, "state": "shutoff", "seen_at": iso(c + 2)}]})
    assert r.status_code == 200, r.text
    seen(client, pool, sid, "running", c + 3,
         operation={"operation_id": op["id"], "result": "success"})
    assert status(client, acct, sid) == "ACTIVE"
    usage = server_usage(client, acct, sid, start=c, end=c + 4)
    assert kinds(usage) == [("created", c), ("running", c + 1)]
    assert seconds(usage) == (4, 3, 3, 3 * 2048, 4 * 20)  # one run, still open


def test_a_down_host_stops_compute_at_its_last_heartbeat_and_billing_resumes_on_return(
    client: TestClient, admin: dict[str, str], pool: dict[str, str], settings: Settings,
    database_url: str,
) -> None:
    zone = unique("az")
    host = enroll_host(client, admin, availability_zone=zone)
    r = client.put("/v1/agent/inventory", headers=host.headers, json=inventory())
    assert r.status_code == 200, r.text
    assert client.post("/v1/agent/heartbeat", headers=host.headers,
                       json={"observed": []}).status_code == 200
    acct = make_account(client, admin)
    sid, c = create(client, acct, database_url, availability_zone=zone)
    wait_until(c + 2)
    # The last heartbeat that saw the server running, at the API's clock.
    r = client.post("/v1/agent/heartbeat", headers=host.headers, json={"observed": [
        {"server_id": sid, "state": "running", "seen_at": iso(c + 1)}]})
    assert r.status_code == 200, r.text
    # A heartbeat that only confirms is coalesced: written by the process's next flush.
    liveness.flush(client.app.state.sessionmaker)  # type: ignore[attr-defined]
    with db(client) as s:
        heartbeat = s.get(Host, host.id).last_heartbeat_at  # type: ignore[union-attr]
    assert heartbeat is not None
    h = epoch(heartbeat)

    # The host falls silent (the pool host keeps beating); the monitor runs once the host
    # has been silent long enough.
    wait_until(h + 2)
    assert client.post("/v1/agent/heartbeat", headers=pool, json={"observed": []}).is_success
    later = heartbeat + timedelta(seconds=settings.host_down_after_seconds + 1)
    with db(client) as s, s.begin():
        assert host_monitor.sweep(s, settings, now=heartbeat) == 0  # not down yet
        assert host_monitor.sweep(s, settings, now=later) >= 1
    with db(client) as s, s.begin():
        assert host_monitor.sweep(s, settings, now=later) == 0  # another process: no-op
    usage = server_usage(client, acct, sid, start=c, end=h + 1)
    assert kinds(usage)[-1] == ("host_down", h)
    assert [k for k, _ in kinds(usage)].count("host_down") == 1
    # Running [c+1, h), plus the minimum's extra at h.
    assert seconds(usage)[1] == max(h - (c + 1), 60)

    # The host comes back and its agent sees the server running: billing resumes then.
    r = client.post("/v1/agent/heartbeat", headers=host.headers, json={"observed": [
        {"server_id": sid, "state": "running", "seen_at": iso(h + 1)}]})
    assert r.status_code == 200, r.text
    usage = server_usage(client, acct, sid, start=h + 1, end=h + 2)
    assert kinds(usage)[-1] == ("running", h + 1)
    assert seconds(usage)[1] == 1


def test_force_delete_of_a_running_server_stops_all_billing(
    client: TestClient, admin: dict[str, str], pool: dict[str, str], database_url: str,
) -> None:
    acct = make_account(client, admin)
    sid, c = create(client, acct, database_url)
    wait_until(c + 2)
    seen(client, pool, sid, "running", c + 1)
    with db(client) as s, s.begin():
        server = s.get(Server, sid)
        assert server is not None
        force_delete(s, server, user_id="admin")
        d = epoch(server.deleted_at)  # type: ignore[arg-type]
    usage = server_usage(client, acct, sid)
    assert kinds(usage)[-1] == ("deleted", d)
    assert usage["state"] == "deleted"
    after = server_usage(client, acct, sid, start=d + 1, end=d + 3600)
    assert seconds(after)[0] == 0 and seconds(after)[4] == 0  # nothing accrues after delete


def test_minicloud_api_processes_bill_what_their_agents_report(
    client: TestClient, admin: dict[str, str], pool: dict[str, str], database_url: str,
    live_api: Callable[[int], list[str]],
) -> None:
    # Real ``minicloud-api`` processes register the billing hooks too; the same report sent
    # to two of them at once is billed once.
    first, second = live_api(2)
    acct = make_account(client, admin)
    image = make_image_row(database_url, acct.project_id)
    with httpx.Client(base_url=first, timeout=30) as a, \
            httpx.Client(base_url=second, timeout=30) as b:
        r = a.post("/v1/servers", headers=acct.headers,
                   json={"name": unique("vm"), "flavor": "small", "image": image})
        assert r.status_code == 202, r.text
        sid = r.json()["id"]
        c = epoch(datetime.fromisoformat(r.json()["created_at"]))
        wait_until(c + 3)
        body = {"state": "running", "seen_at": iso(c + 1), "idempotency_key": unique("obs")}
        url = f"/v1/agent/servers/{sid}/observations"
        with ThreadPoolExecutor(2) as pool_:
            answers = list(pool_.map(lambda h: h.post(url, headers=pool, json=body), (a, b)))
        assert sorted(x.json()["applied"] for x in answers) == [False, True]
        r = b.post(url, headers=pool, json={"state": "shutoff", "seen_at": iso(c + 2),
                                            "idempotency_key": unique("obs")})
        assert r.status_code == 200, r.text
        r = a.get(f"/v1/usage/servers/{sid}", headers=acct.headers,
                  params={"start": iso(c), "end": iso(c + 3)})
        assert r.status_code == 200, r.text
    usage = r.json()
    assert kinds(usage) == [("created", c), ("running", c + 1), ("stopped", c + 2)]
    # Running [c+1, c+2) = 1 s plus the minimum's 59 s at c+2; disk [c, c+3).
    assert seconds(usage) == (3, 60, 60, 60 * 2048, 3 * 20)


def test_deleting_a_server_no_host_holds_records_deleted_at_once(
    client: TestClient, admin: dict[str, str], database_url: str,
) -> None:
    acct = make_account(client, admin)
    sid, _ = create(client, acct, database_url)
    # Every server is placed at create now; a row without a host (kept by older builds, or a
    # placement undone by an admin) is deleted at once, and billing must stop with it.
    with db(client) as s, s.begin():
        server = s.get(Server, sid)
        assert server is not None
        server.host_id = None
    assert client.delete(f"/v1/servers/{sid}", headers=acct.headers).status_code == 202
    assert status_gone(client, acct, sid)
    usage = server_usage(client, acct, sid)
    assert [k for k, _ in kinds(usage)] == ["created", "deleted"]
    assert usage["state"] == "deleted"


def test_every_api_process_runs_the_host_monitor_and_stops_it_on_shutdown(
    client: TestClient, settings: Settings,
) -> None:
    assert not client.app.state.host_monitor.done()  # type: ignore[attr-defined]
    with TestClient(create_app(settings)) as other:
        task = other.app.state.host_monitor  # type: ignore[attr-defined]
        assert not task.done()
    assert task.done() and not task.cancelled() and task.exception() is None


def test_the_host_monitor_loop_stops_when_told(client: TestClient, settings: Settings) -> None:
    factory: sessionmaker[Session] = client.app.state.sessionmaker  # type: ignore[attr-defined]

    async def start_then_stop() -> None:
        stop = asyncio.Event()
        task = asyncio.create_task(host_monitor.run(factory, settings, stop))
        await asyncio.sleep(0)  # the loop is waiting for its first tick
        stop.set()
        await task

    asyncio.run(start_then_stop())


def test_a_stop_reported_late_bills_up_to_the_stop_not_to_the_host_down(
    client: TestClient, admin: dict[str, str], pool: dict[str, str], settings: Settings,
    database_url: str,
) -> None:
    zone = unique("az")
    host = enroll_host(client, admin, availability_zone=zone)
    r = client.put("/v1/agent/inventory", headers=host.headers, json=inventory())
    assert r.status_code == 200, r.text
    acct = make_account(client, admin)
    assert client.post("/v1/agent/heartbeat", headers=host.headers,
                       json={"observed": []}).status_code == 200
    sid, c = create(client, acct, database_url, availability_zone=zone)
    wait_until(c + 3)
    r = client.post("/v1/agent/heartbeat", headers=host.headers, json={"observed": [
        {"server_id": sid, "state": "running", "seen_at": iso(c + 1)}]})
    assert r.status_code == 200, r.text
    # A heartbeat that only confirms is coalesced: written by the process's next flush.
    liveness.flush(client.app.state.sessionmaker)  # type: ignore[attr-defined]
    with db(client) as s:
        heartbeat = s.get(Host, host.id).last_heartbeat_at  # type: ignore[union-attr]
    assert heartbeat is not None
    h = epoch(heartbeat)
    wait_until(h + 2)
    assert client.post("/v1/agent/heartbeat", headers=pool, json={"observed": []}).is_success
    later = heartbeat + timedelta(seconds=settings.host_down_after_seconds + 1)
    with db(client) as s, s.begin():
        assert host_monitor.sweep(s, settings, now=later) >= 1
    # The agent's report that the guest shut down at c+2 (before the host went silent)
    # arrives only when the host is back: compute stops at c+2, not at the host_down.
    seen(client, host.headers, sid, "shutoff", c + 2)
    usage = server_usage(client, acct, sid, start=c, end=h + 1)
    assert kinds(usage) == [("created", c), ("running", c + 1), ("stopped", c + 2),
                            ("host_down", h)]
    # Running [c+1, c+2) = 1 s plus the minimum's 59 s at c+2.
    assert seconds(usage)[1] == 60


def test_a_paused_stretch_bills_ram_and_disk_but_no_vcpu(
    client: TestClient, admin: dict[str, str], pool: dict[str, str], settings: Settings,
    database_url: str,
) -> None:
    acct = make_account(client, admin)
    sid, c = create(client, acct, database_url)  # small: 1 vCPU, 2 GiB, 20 GiB
    wait_until(c + 8)
    seen(client, pool, sid, "running", c + 1)
    act(client, acct, sid, "pause")
    # The request alone bills nothing: billing follows what the agent sees.
    assert kinds(server_usage(client, acct, sid))[-1] == ("running", c + 1)
    desired = client.get("/v1/agent/servers", headers=pool).json()["servers"]
    assert next(d["desired"] for d in desired if d["server_id"] == sid) == "paused"
    seen(client, pool, sid, "paused", c + 3)
    assert status(client, acct, sid) == "PAUSED"
    act(client, acct, sid, "unpause")
    seen(client, pool, sid, "running", c + 5)
    assert status(client, acct, sid) == "ACTIVE"
    act(client, acct, sid, "stop")
    seen(client, pool, sid, "shutoff", c + 6)
    usage = server_usage(client, acct, sid, start=c, end=c + 8)
    assert kinds(usage) == [("created", c), ("running", c + 1), ("paused", c + 3),
                            ("running", c + 5), ("stopped", c + 6)]
    # One run [c+1, c+6) of 5 s, the pause inside it: the minimum bills it 60 s, of which the
    # 2 paused seconds [c+3, c+5) are RAM only. Disk and server time go on throughout.
    assert seconds(usage) == (8, 58, 58, 60 * 2048, 8 * 20)
    entries = [Entry(e["seq"], epoch(datetime.fromisoformat(e["at"])), e["kind"], e["vcpus"],
                     e["ram_mb"], e["disk_gb"]) for e in usage["entries"]]
    oracle = brute_force(entries, c, c + 8, c + 8, settings.billing_minimum_run_seconds)
    assert seconds(usage) == (oracle.server_seconds, oracle.running_seconds,
                              oracle.vcpu_seconds, oracle.ram_mib_seconds,
                              oracle.disk_gib_seconds)
