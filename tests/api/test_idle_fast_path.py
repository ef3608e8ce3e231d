"""The idle fleet's fast path (api.agent.fastpath), seen from real API processes.

An idle heartbeat of a host that is up, from a credential the process checked, runs no SQL; a
long-poll whose wait ends unchanged runs one statement and answers 304 Not Modified; one woken
by a change (made through another process on PostgreSQL) answers the new desired state. The
remembered credential dies with a revocation in every process, and a heartbeat accepted just
before a revocation never writes the host's heartbeat time after it.

The evidence is what a client sees (status, body, headers), what each process publishes on
``/metrics`` (SQL statements by route, requests by route), and the hosts API.
"""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Callable
from datetime import UTC, datetime, timedelta

import httpx
from fastapi.testclient import TestClient
from sqlalchemy import Engine, event
from sqlalchemy.orm import sessionmaker

from api.agent import fastpath, liveness, service
from api.config import Settings
from api.db import make_engine, utcnow
from api.models import Host
from tests.agent_factories import EnrolledHost, db, enroll_host, inventory, make_server
from tests.api.test_long_poll_push import wait_until_polls_wait
from tests.catalog_rows import make_image_row
from tests.db import backend
from tests.e2e.stack import wait_until
from tests.factories import make_account, unique
from tests.scrape import LONG_POLL as POLL
from tests.scrape import Samples, scrape, value
from tests.scrape import long_poll_statements as poll_statements

HEARTBEAT = "/v1/agent/heartbeat"


def _beat(url: str, host: EnrolledHost, *, full: bool = False, passes: int | None = None,
          request_id: str | None = None) -> httpx.Response:
    """A heartbeat with nothing new (``full=False``: the agent's partial heartbeat)."""
    body: dict[str, object] = {"observed": [], "full": full}
    if passes is not None:
        body["progress"] = {"passes": passes}
    headers = dict(host.headers, **({"X-Request-Id": request_id} if request_id else {}))
    return httpx.post(f"{url}{HEARTBEAT}", headers=headers, json=body, timeout=30)


def _hb_statements(s: Samples) -> float:
    return value(s, "minicloud_db_statements_total", route=HEARTBEAT)


def _hb_answers(s: Samples) -> float:
    return value(s, "minicloud_http_requests_total", method="POST", route=HEARTBEAT,
                 status="2xx")


def _up_host(client: TestClient, admin: dict[str, str], url: str) -> EnrolledHost:
    host = enroll_host(client, admin, availability_zone=unique("az"))
    assert client.put("/v1/agent/inventory", headers=host.headers,
                      json=inventory()).status_code == 200
    r = _beat(url, host, full=True)  # the full path: the credential is checked and remembered
    assert r.status_code == 200, r.text
    assert r.json()["full_report"] is False
    return host


def test_an_idle_heartbeat_of_an_up_host_runs_no_sql_and_keeps_it_up(
        client: TestClient, admin: dict[str, str],
        live_api: Callable[[int], list[str]]) -> None:
    [url] = live_api(1)
    host = _up_host(client, admin, url)
    before = scrape(url)
    answers = [_beat(url, host, passes=n, request_id=f"idle-{n}") for n in (1, 2, 3)]
    after = scrape(url)
    assert [(r.status_code, r.headers["X-Request-Id"]) for r in answers] \
        == [(200, "idle-1"), (200, "idle-2"), (200, "idle-3")]
    assert [(r.json()["host_id"], r.json()["full_report"], r.json()["applied"])
            for r in answers] == [(host.id, False, 0)] * 3
    assert _hb_statements(after) == _hb_statements(before), "an idle heartbeat ran SQL"
    assert _hb_answers(after) - _hb_answers(before) == 3  # still counted per route

    # The coalesced flush writes the newest heartbeat and its progress: the host stays up.
    newest = datetime.fromisoformat(answers[-1].json()["last_heartbeat_at"])

    def written() -> dict[str, object] | None:
        h = client.get(f"/v1/hosts/{host.id}", headers=admin).json()
        seen = h["last_heartbeat_at"]
        return h if seen and datetime.fromisoformat(seen) >= newest else None

    shown = wait_until(written, 30, "the flushed heartbeat")
    assert (shown["state"], shown["loop_progress"]["passes"]) == ("up", 3)  # type: ignore[index]


def test_a_partial_heartbeat_of_a_host_that_was_not_up_asks_for_a_full_report(
        client: TestClient, admin: dict[str, str]) -> None:
    host = enroll_host(client, admin)  # never heartbeated: not up
    body = {"observed": [], "full": False}
    r = client.post(HEARTBEAT, headers=host.headers, json=body)
    assert (r.status_code, r.json()["full_report"]) == (200, True)
    r = client.post(HEARTBEAT, headers=host.headers, json={"observed": [], "full": True})
    assert (r.status_code, r.json()["full_report"]) == (200, False)
    r = client.post(HEARTBEAT, headers=host.headers, json=body)  # up now
    assert (r.status_code, r.json()["full_report"]) == (200, False)


def test_an_unchanged_long_poll_runs_one_statement_and_answers_not_modified(
        client: TestClient, admin: dict[str, str],
        live_api: Callable[[int], list[str]]) -> None:
    [url] = live_api(1)
    host = _up_host(client, admin, url)
    cursor = httpx.get(f"{url}{POLL}", headers=host.headers).json()["cursor"]
    before = scrape(url)
    r = httpx.get(f"{url}{POLL}", headers=dict(host.headers, **{"X-Request-Id": "poll-1"}),
                  params={"since": cursor, "wait": 1}, timeout=30)
    after = scrape(url)
    assert (r.status_code, r.content, r.headers["X-Request-Id"]) == (304, b"", "poll-1")
    assert poll_statements(after) - poll_statements(before) == 1
    ended = value(after, "minicloud_agent_long_polls_ended_total", how="timeout") \
        - value(before, "minicloud_agent_long_polls_ended_total", how="timeout")
    assert ended == 1


def test_a_remembered_long_poll_woken_by_a_change_in_another_process_answers_it(
        client: TestClient, admin: dict[str, str], database_url: str,
        live_api: Callable[[int], list[str]]) -> None:
    # SQLite runs one API process; PostgreSQL two, the create going through the other one.
    urls = live_api(2 if backend() == "postgresql" else 1)
    waiting_on, create_on = urls[0], urls[-1]
    host = _up_host(client, admin, waiting_on)
    cursor = httpx.get(f"{waiting_on}{POLL}", headers=host.headers).json()["cursor"]
    acct = make_account(client, admin)
    image = make_image_row(database_url, acct.project_id)
    zone = client.get(f"/v1/hosts/{host.id}", headers=admin).json()["availability_zone"]
    answer: list[httpx.Response] = []

    def poll() -> None:
        answer.append(httpx.get(f"{waiting_on}{POLL}", headers=host.headers, timeout=90,
                                params={"since": cursor, "wait": 30}))

    t = threading.Thread(target=poll)
    t.start()
    waiting = wait_until_polls_wait(waiting_on, 1)
    r = httpx.post(f"{create_on}/v1/servers", headers=acct.headers, timeout=30, json={
        "name": unique("vm"), "flavor": "tiny", "image": image, "availability_zone": zone})
    assert r.status_code == 202, r.text
    t.join()
    assert answer[0].status_code == 200, answer[0].text
    body = answer[0].json()
    assert body["cursor"] != cursor
    assert [s["server_id"] for s in body["servers"]] == [r.json()["id"]]
    after = scrape(waiting_on)
    assert value(after, "minicloud_agent_long_polls_ended_total", how="notified") \
        - value(waiting, "minicloud_agent_long_polls_ended_total", how="notified") == 1


def test_a_revoked_credential_is_refused_by_the_next_heartbeat_in_every_process(
        client: TestClient, admin: dict[str, str],
        live_api: Callable[[int], list[str]]) -> None:
    # PostgreSQL: the revocation goes through the first process, the second hears it by NOTIFY.
    urls = live_api(2 if backend() == "postgresql" else 1)
    host = _up_host(client, admin, urls[0])
    for url in urls:
        assert _beat(url, host, full=True).status_code == 200
        assert _beat(url, host).status_code == 200  # remembered: the fast path answers
    # A long-poll waits in each process; the revocation wakes it there (and it is refused),
    # so once it has answered, that process has heard of the revocation.
    answers: dict[str, httpx.Response] = {}

    def poll(url: str) -> None:
        cursor = httpx.get(f"{url}{POLL}", headers=host.headers).json()["cursor"]
        answers[url] = httpx.get(f"{url}{POLL}", headers=host.headers, timeout=90,
                                 params={"since": cursor, "wait": 30})

    threads = [threading.Thread(target=poll, args=(url,)) for url in urls]
    for t in threads:
        t.start()
    for url in urls:
        wait_until_polls_wait(url, 1)
    r = httpx.delete(f"{urls[0]}/v1/hosts/{host.id}/credential", headers=admin, timeout=30)
    assert r.status_code == 204, r.text
    for t in threads:
        t.join()
    assert {url: a.status_code for url, a in answers.items()} == {url: 401 for url in urls}
    for url in urls:
        refused = _beat(url, host)
        assert (refused.status_code, refused.json()["code"]) \
            == (401, "invalid_host_credential")


def test_a_heartbeat_kept_before_a_revocation_is_not_written_after_it(
        client: TestClient, admin: dict[str, str]) -> None:
    host = enroll_host(client, admin)
    assert client.post(HEARTBEAT, headers=host.headers, json={"observed": []}).status_code == 200
    with db(client) as s:
        old = s.get(Host, host.id)
        assert old is not None and old.credential_digest is not None
        digest, stored = old.credential_digest, old.last_heartbeat_at
    maker = client.app.state.sessionmaker  # type: ignore[attr-defined]
    buffer = liveness.HeartbeatBuffer()
    buffer.record(host.id, digest, utcnow())  # accepted from the cache of some process ...
    r = client.delete(f"/v1/hosts/{host.id}/credential", headers=admin)  # ... then revoked
    assert r.status_code == 204, r.text
    assert liveness.flush(maker, buffer) == 1
    shown = client.get(f"/v1/hosts/{host.id}", headers=admin).json()
    assert datetime.fromisoformat(shown["last_heartbeat_at"]) \
        == stored.replace(tzinfo=stored.tzinfo or UTC)

    # The host's current credential is written, as always.
    r = client.post(f"/v1/hosts/{host.id}/credential", headers=admin)
    assert r.status_code == 201, r.text
    with db(client) as s:
        fresh = s.get(Host, host.id)
        assert fresh is not None and fresh.credential_digest is not None
        new_digest = fresh.credential_digest
    at = utcnow()
    buffer.record(host.id, new_digest, at)
    assert liveness.flush(maker, buffer) == 1
    shown = client.get(f"/v1/hosts/{host.id}", headers=admin).json()
    assert datetime.fromisoformat(shown["last_heartbeat_at"]) == at


class _Statements:
    """Counts the statements an engine sends (an executemany counts once)."""

    def __init__(self, engine: Engine) -> None:
        self.sent: list[str] = []
        event.listen(engine, "before_cursor_execute", self._count)

    def _count(self, conn: object, cursor: object, statement: str, *args: object) -> None:
        self.sent.append(statement)


def test_polls_ending_in_the_same_tick_share_one_statement_that_sees_every_change(
        client: TestClient, admin: dict[str, str], settings: Settings) -> None:
    hosts = [enroll_host(client, admin).id for _ in range(3)]
    with db(client) as s:
        before = {h: service.cursor(s, h) for h in hosts}
    # A change nobody announced (a missed notification): the re-read still sees it.
    make_server(client, make_account(client, admin).project_id, hosts[1], notify=False)
    with db(client) as s:
        expected = [service.cursor(s, h) for h in hosts]
    assert expected[1] != before[hosts[1]] and expected[0] == before[hosts[0]]

    engine = make_engine(settings.effective_database_url)  # only these reads use it
    try:
        statements = _Statements(engine)
        reads = fastpath.CursorReads(lambda: engine, fastpath.RECHECK_TICK, {})

        async def end_together() -> list[str | None]:
            return list(await asyncio.gather(
                *(reads.read(h) for h in [*hosts, "no-such-host", hosts[0]])))

        assert asyncio.run(end_together()) == [*expected, None, expected[0]]
        assert len(statements.sent) == 1
        # The next tick reads again (nothing is kept between ticks).
        assert asyncio.run(end_together()) == [*expected, None, expected[0]]
        assert len(statements.sent) == 2
    finally:
        engine.dispose()


def test_a_remembered_poll_sees_a_change_nobody_announced_at_the_end_of_its_wait(
        client: TestClient, admin: dict[str, str],
        live_api: Callable[[int], list[str]]) -> None:
    [url] = live_api(1)
    host = _up_host(client, admin, url)
    cursor = httpx.get(f"{url}{POLL}", headers=host.headers).json()["cursor"]
    server = make_server(client, make_account(client, admin).project_id, host.id,
                         notify=False)
    before = scrape(url)
    r = httpx.get(f"{url}{POLL}", headers=host.headers, params={"since": cursor, "wait": 1},
                  timeout=30)
    after = scrape(url)
    assert r.status_code == 200, r.text
    assert r.json()["cursor"] != cursor
    assert [s["server_id"] for s in r.json()["servers"]] == [server]
    assert value(after, "minicloud_agent_long_polls_ended_total", how="timeout") \
        - value(before, "minicloud_agent_long_polls_ended_total", how="timeout") == 1


def test_the_flush_writes_every_kind_of_heartbeat_in_one_statement_on_postgresql(
        client: TestClient, admin: dict[str, str], settings: Settings) -> None:
    plain, same, moved, revoked, newer = (enroll_host(client, admin).id for _ in range(5))
    earlier = utcnow() - timedelta(minutes=5)
    at = utcnow()
    digests: dict[str, str] = {}
    with db(client) as s:
        for host_id in (plain, same, moved, revoked, newer):
            row = s.get(Host, host_id)
            assert row is not None and row.credential_digest is not None
            digests[host_id] = row.credential_digest
            row.loop_progress, row.loop_progress_at = {"passes": 1}, earlier
            row.last_heartbeat_at = earlier if host_id != newer else at + timedelta(hours=1)
    buffer = liveness.HeartbeatBuffer()
    buffer.record(plain, digests[plain], at)
    buffer.record(same, digests[same], at, {"passes": 1})
    buffer.record(moved, digests[moved], at, {"passes": 2}, at)
    buffer.record(revoked, "0" * 64, at, {"passes": 9}, at)  # not its credential (any more)
    buffer.record(newer, digests[newer], at, {"passes": 9}, at)  # older than the stored one

    engine = make_engine(settings.effective_database_url)  # only the flush uses it
    try:
        statements = _Statements(engine)
        assert liveness.flush(sessionmaker(engine), buffer) == 5
        writes = [s for s in statements.sent if s.lstrip().upper().startswith("UPDATE")]
        assert len(writes) == (1 if backend() == "postgresql" else 3)
    finally:
        engine.dispose()
    with db(client) as s:
        shown = {h: (row.last_heartbeat_at, row.loop_progress, row.loop_progress_at)
                 for h in (plain, same, moved, revoked, newer)
                 if (row := s.get(Host, h)) is not None}
    assert shown == {
        plain: (at, {"passes": 1}, earlier),
        same: (at, {"passes": 1}, earlier),
        moved: (at, {"passes": 2}, at),
        revoked: (earlier, {"passes": 1}, earlier),
        newer: (at + timedelta(hours=1), {"passes": 1}, earlier),
    }


def test_a_poll_woken_while_its_end_of_wait_read_is_pending_answers_at_once(
        client: TestClient, admin: dict[str, str], settings: Settings) -> None:
    """A wait that ended joins the tick's shared cursor read; a change committed before that
    read runs still answers the poll at once (the read is not waited for)."""
    host = _up_host_in_process(client, admin)
    cursor = client.get(POLL, headers=host.headers).json()["cursor"]  # remembered
    engine = make_engine(settings.effective_database_url)  # the fast path's reads only
    statements = _Statements(engine)
    # A tick far longer than the test: the poll's own wait ends after 0.5 s, its re-read
    # would run 29.5 s later.
    layer = fastpath.AgentFastPath(client.app, settings, lambda: engine, recheck_tick=29.5)
    project = make_account(client, admin).project_id

    async def poll_and_change() -> httpx.Response:
        transport = httpx.ASGITransport(app=layer)
        async with httpx.AsyncClient(transport=transport, base_url="http://api") as http:
            answer = asyncio.ensure_future(http.get(
                POLL, headers=host.headers, params={"since": cursor, "wait": 30}, timeout=90))
            await asyncio.sleep(1.0)  # the wait (0.5 s) is over: the poll waits for its read
            server = await asyncio.to_thread(make_server, client, project, host.id)
            r = await answer
            assert [s["server_id"] for s in r.json()["servers"]] == [server]
            return r

    try:
        r = asyncio.run(poll_and_change())
        assert r.status_code == 200, r.text
        assert r.json()["cursor"] != cursor
        assert statements.sent == []  # answered by the wake-up, not by the tick's read
    finally:
        engine.dispose()


def _up_host_in_process(client: TestClient, admin: dict[str, str]) -> EnrolledHost:
    host = enroll_host(client, admin, availability_zone=unique("az"))
    assert client.put("/v1/agent/inventory", headers=host.headers,
                      json=inventory()).status_code == 200
    r = client.post(HEARTBEAT, headers=host.headers, json={"observed": [], "full": True})
    assert (r.status_code, r.json()["full_report"]) == (200, False)
    return host
