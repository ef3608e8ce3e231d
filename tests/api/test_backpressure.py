"""Back-pressure: a saturated or unreachable database and a saturated agent admission answer
503 with a stable code and Retry-After, never a 500 and never the driver's text."""

from __future__ import annotations

import os
import socket
import sqlite3
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families
from sqlalchemy import text
from sqlalchemy.engine import make_url

from api.config import Settings
from api.db import make_engine
from api.main import create_app
from tests.agent_factories import enroll_host
from tests.conftest import ADMIN_TOKEN
from tests.db import backend
from tests.factories import bearer

DRIVER_WORDS = ("psycopg", "sqlite", "sqlalchemy", "connection refused", "OperationalError",
                "127.0.0.1", "Traceback")


def assert_503(r: httpx.Response, code: str) -> dict[str, Any]:
    assert r.status_code == 503, r.text
    assert r.headers["content-type"] == "application/problem+json"
    assert int(r.headers["Retry-After"]) >= 1
    body: dict[str, Any] = r.json()
    assert body["code"] == code
    for word in DRIVER_WORDS:
        assert word.lower() not in r.text.lower(), r.text
    return body


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _app(settings: Settings, **overrides: Any) -> TestClient:
    """A second app on the test database, with ``overrides`` and /metrics open."""
    return TestClient(create_app(settings.model_copy(update={
        "metrics_public": True, "bootstrap_admin_token": None, **overrides})))


@pytest.fixture
def small_pool(settings: Settings, client: TestClient) -> Iterator[TestClient]:
    """An app with one pooled connection, given up after 0.2 s."""
    with _app(settings, db_pool_size=1, db_max_overflow=0, db_pool_timeout_seconds=0.2) as c:
        yield c


@pytest.fixture
def one_turn(settings: Settings, client: TestClient) -> Iterator[TestClient]:
    """An app that handles one agent enrollment/inventory/heartbeat at a time, no waiting."""
    with _app(settings, agent_admission_concurrency=1, agent_admission_wait_seconds=0.0) as c:
        yield c


def test_a_request_that_gets_no_pooled_connection_answers_database_busy(
        small_pool: TestClient, admin: dict[str, str]) -> None:
    small_app = small_pool
    engine = small_app.app.state.engine  # type: ignore[attr-defined]
    with engine.connect():  # the pool's only connection is taken
        body = assert_503(small_app.get("/v1/servers", headers=admin), "database_busy")
        assert small_app.post("/v1/agent/heartbeat", headers=bearer("x"),
                              json={"observed": []}).json()["code"] == "database_busy"
    assert body["status"] == 503
    assert small_app.get("/v1/servers", headers=admin).status_code == 200


class RowLock:
    """Blocks writers of one host row from outside the API (SQLite: the whole database)."""

    def __init__(self, database_url: str) -> None:
        self.database_url = database_url
        self.sqlite: sqlite3.Connection | None = None
        self.engine = None if database_url.startswith("sqlite") else make_engine(database_url)
        self.conn: Any = None

    def lock(self, host_id: str) -> None:
        if self.engine is None:
            path = make_url(self.database_url).database or ""
            self.sqlite = sqlite3.connect(path, isolation_level=None)
            self.sqlite.execute("BEGIN IMMEDIATE")
        else:
            self.conn = self.engine.connect()
            self.conn.execute(text("SELECT id FROM hosts WHERE id = :id FOR UPDATE"),
                              {"id": host_id})

    def release(self) -> None:
        if self.sqlite is not None:
            self.sqlite.rollback()
            self.sqlite.close()
            self.sqlite = None
        if self.conn is not None:
            self.conn.rollback()
            self.conn.close()
            self.conn = None


@pytest.fixture
def row_lock(database_url: str) -> Iterator[RowLock]:
    lock = RowLock(database_url)
    yield lock
    lock.release()
    if lock.engine is not None:
        lock.engine.dispose()


def admitted(c: TestClient) -> float:
    families = text_string_to_metric_families(c.get("/metrics").text)
    return next(s.value for f in families for s in f.samples
                if s.name == "minicloud_agent_admitted")


def test_agent_calls_beyond_the_admission_bound_answer_agent_busy(
        one_turn: TestClient, client: TestClient, admin: dict[str, str],
        row_lock: RowLock) -> None:
    small_app = one_turn
    host = enroll_host(client, admin)
    row_lock.lock(host.id)
    answers: list[httpx.Response] = []
    blocked = threading.Thread(target=lambda: answers.append(small_app.post(
        "/v1/agent/heartbeat", headers=host.headers, json={"observed": []})))
    blocked.start()
    deadline = time.monotonic() + 30
    while admitted(small_app) < 1:  # the heartbeat holds the only turn, waiting on the lock
        assert time.monotonic() < deadline, "the heartbeat never started"
        time.sleep(0.05)
    # Enrollment and heartbeats of other hosts are refused before any work.
    r = small_app.post("/v1/agent/enroll", json={
        "token": "mcet_unused", "name": "n", "availability_zone": "nova",
        "libvirt_uri": "test:///default", "virt_type": "qemu", "architecture": "x86_64"})
    assert_503(r, "agent_busy")
    assert_503(small_app.post("/v1/agent/heartbeat", headers=host.headers,
                              json={"observed": []}), "agent_busy")
    assert small_app.get("/healthz").status_code == 200  # other routes are not limited
    row_lock.release()
    blocked.join(timeout=60)
    assert [a.status_code for a in answers] == [200]  # the admitted one went through


@pytest.mark.skipif(backend() == "sqlite", reason="PostgreSQL's lock timeout (SQLite waits "
                    "its busy timeout on the whole database, covered by the write gate)")
def test_a_lock_held_beyond_the_lock_timeout_answers_database_busy(
        settings: Settings, client: TestClient, admin: dict[str, str],
        row_lock: RowLock) -> None:
    host = enroll_host(client, admin)
    with _app(settings, db_lock_timeout_seconds=0.3) as short:
        row_lock.lock(host.id)  # a transaction elsewhere that never lets go of the host row
        assert_503(short.post("/v1/agent/heartbeat", headers=host.headers,
                              json={"observed": []}), "database_busy")
        row_lock.release()
        assert short.post("/v1/agent/heartbeat", headers=host.headers,
                          json={"observed": []}).status_code == 200


@pytest.mark.parametrize("url", [
    pytest.param("postgresql+psycopg://minicloud:minicloud@127.0.0.1:{port}/postgres",
                 id="postgresql-closed-port"),
    pytest.param("sqlite:///{tmp}/no/such/dir/minicloud.db", id="sqlite-missing-file"),
])
def test_an_unreachable_database_answers_database_unavailable_on_every_route(
        url: str, tmp_path: Path) -> None:
    port = _free_port()
    db_url = url.format(port=_free_port(), tmp=tmp_path)
    env = dict(os.environ, MINICLOUD_DATABASE_URL=db_url, MINICLOUD_DATA_DIR=str(tmp_path),
               MINICLOUD_LOG_LEVEL="WARNING")
    with open(tmp_path / "api.log", "wb") as log:
        proc = subprocess.Popen(
            [sys.executable, "-c", "from api.server import run; run()",
             "--host", "127.0.0.1", "--port", str(port), "--no-migrate"],
            env=env, stdout=log, stderr=subprocess.STDOUT)
    base = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            assert time.monotonic() < deadline and proc.poll() is None, "API did not start"
            time.sleep(0.1)
        ready = assert_503(httpx.get(base + "/readyz"), "database_unavailable")
        assert ready["checks"] == {"database": "unavailable"}
        admin = bearer(ADMIN_TOKEN)
        for method, path, kwargs in [
            ("GET", "/v1/servers", {"headers": admin}),
            ("POST", "/v1/servers", {"headers": admin, "json": {"name": "x"}}),
            ("POST", "/v1/auth/tokens", {"json": {"user": "a", "password": "b", "project": "p"}}),
            ("POST", "/v1/agent/heartbeat", {"headers": admin, "json": {"observed": []}}),
            ("GET", "/v1/agent/servers", {"headers": admin}),
            ("GET", "/metrics", {"headers": admin}),
        ]:
            r = httpx.request(method, base + path, timeout=30, **kwargs)
            assert_503(r, "database_unavailable")
        assert "Internal error" not in (tmp_path / "api.log").read_text()
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def test_write_heavy_requests_take_turns_a_few_at_a_time_per_process(
        settings: Settings, client: TestClient) -> None:
    # SQLite has one writer: creates, actions and deletes go one at a time; on PostgreSQL a
    # few per process (more would only contend for the interpreter lock), the rest waiting on
    # the event loop in arrival order.
    import asyncio

    from api.deps import WriteTurns

    turns: WriteTurns = client.app.state.write_turns  # type: ignore[attr-defined]
    expected = 1 if backend() == "sqlite" else settings.write_turns_per_process
    assert turns.capacity == expected
    with _app(settings, write_turns_per_process=3) as other:
        assert other.app.state.write_turns.capacity == (  # type: ignore[attr-defined]
            1 if backend() == "sqlite" else 3)

    async def storm() -> tuple[int, list[int]]:
        inside, peak, order = 0, 0, []

        async def writer(k: int) -> None:
            nonlocal inside, peak
            async with turns.turns():
                order.append(k)
                inside += 1
                peak = max(peak, inside)
                await asyncio.sleep(0.01)
                inside -= 1

        await asyncio.gather(*(writer(k) for k in range(8)))
        return peak, order

    peak, order = asyncio.run(storm())
    assert peak == expected
    assert order == list(range(8))
