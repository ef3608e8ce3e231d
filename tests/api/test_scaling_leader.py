"""One reconciler across API processes: the database lease, and a leader killed mid scale-out.

Two real ``minicloud-api`` processes share a fresh database; the one holding the lease
launches members one per pass. ``kill -9`` of the leader mid scale-out: the other takes the
lease once it expires and completes the scale-out; the group never exceeds ``max`` and no
member (sequence number, name or server) exists twice.
"""

from __future__ import annotations

import asyncio
import logging
import os
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from datetime import timedelta
from pathlib import Path

import httpx
import pytest
from sqlalchemy import Engine, select

from api.config import Settings
from api.db import make_engine, make_sessionmaker, utcnow
from api.migrate import upgrade
from api.models import Lease, ScalingMember, Server
from api.scaling import lease, reconciler
from api.scaling.reconciler import LEASE
from tests.agent_factories import enroll_host, inventory
from tests.conftest import _free_port
from tests.db import fresh_database
from tests.factories import bearer, make_account, make_flavor, make_image

TOKEN = "mcac_scaling-leader-admin-0123456789abcdef"


def test_the_lease_has_one_holder_until_it_expires(tmp_path: Path) -> None:
    with fresh_database(tmp_path) as url:
        upgrade(url)
        engine = make_engine(url)
        factory = make_sessionmaker(engine)
        now = utcnow()

        def take(holder: str, at: timedelta, ttl: float = 10) -> bool:
            with factory() as session, session.begin():
                return lease.take(session, "l", holder, ttl, now + at)

        def renew(holder: str, at: timedelta) -> bool:
            with factory() as session, session.begin():
                return lease.renew(session, "l", holder, 10, now + at)

        assert take("a", timedelta(0))  # first use creates the row
        assert not take("b", timedelta(seconds=5))  # held by a until +10 s
        assert take("a", timedelta(seconds=5))  # a renews: now until +15 s
        assert not take("b", timedelta(seconds=12))
        assert take("b", timedelta(seconds=16))  # a stopped renewing: b takes over
        assert not renew("a", timedelta(seconds=17))  # a's writes are fenced off
        assert renew("b", timedelta(seconds=17))
        with factory() as session:
            row = session.get(Lease, "l")
            assert row is not None and (row.holder, row.term) == ("b", 2)
        engine.dispose()


def test_a_pass_without_a_free_connection_is_a_warning_and_the_next_pass_runs(
    tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """Pool exhaustion is overload, not a fault: one warning line, no traceback, and the
    reconciler keeps going (the lease is taken once a connection is free)."""
    with fresh_database(tmp_path) as url:
        upgrade(url)
        engine = make_engine(url, pool_size=1, max_overflow=0, pool_timeout=0.05)
        factory = make_sessionmaker(engine)
        settings = Settings(database_url=url, data_dir=tmp_path / "data",
                            scaling_interval_seconds=0.1)

        async def scenario() -> None:
            stop = asyncio.Event()
            task = asyncio.create_task(reconciler.run(factory, settings, "h", stop))
            held = engine.connect()  # the pool's only connection: every pass times out
            await asyncio.sleep(0.5)
            held.close()
            await asyncio.sleep(0.5)
            stop.set()
            await task

        with caplog.at_level(logging.WARNING, logger="minicloud"):
            asyncio.run(scenario())
        skipped = [r for r in caplog.records if "no database connection free" in r.message]
        assert skipped and all(r.levelno == logging.WARNING and r.exc_info is None
                               for r in skipped)
        assert not [r for r in caplog.records if r.levelno >= logging.ERROR]
        with factory() as session:
            row = session.get(Lease, LEASE)
            assert row is not None and row.holder == "h"  # a later pass ran
        engine.dispose()


@pytest.fixture
def two_apis(tmp_path: Path) -> Iterator[tuple[Engine, list[tuple[str, subprocess.Popen[bytes]]]]]:
    """Two API processes on a fresh database, reconciling fast with a 3 s lease."""
    with fresh_database(tmp_path) as url:
        upgrade(url)
        procs: list[tuple[str, subprocess.Popen[bytes]]] = []
        env = dict(os.environ, MINICLOUD_DATABASE_URL=url, MINICLOUD_DATA_DIR=str(tmp_path),
                   MINICLOUD_BOOTSTRAP_ADMIN_TOKEN=TOKEN, MINICLOUD_LOG_LEVEL="WARNING",
                   MINICLOUD_SCALING_INTERVAL_SECONDS="0.4",
                   MINICLOUD_SCALING_LEASE_SECONDS="3",
                   MINICLOUD_SCALING_LAUNCHES_PER_PASS="1")
        try:
            for _ in range(2):
                port = _free_port()
                log = open(tmp_path / f"api-{port}.log", "wb")  # noqa: SIM115
                proc = subprocess.Popen(
                    [sys.executable, "-c", "from api.server import run; run()", "--host",
                     "127.0.0.1", "--port", str(port), "--no-migrate"],
                    env=env | {"MINICLOUD_PUBLIC_URL": f"http://127.0.0.1:{port}"},
                    stdout=log, stderr=subprocess.STDOUT)
                base = f"http://127.0.0.1:{port}"
                deadline = time.monotonic() + 30
                while True:
                    try:
                        if httpx.get(base + "/healthz", timeout=1).status_code == 200:
                            break
                    except httpx.TransportError:
                        pass
                    assert proc.poll() is None and time.monotonic() < deadline, \
                        (tmp_path / f"api-{port}.log").read_text()
                    time.sleep(0.1)
                procs.append((base, proc))
            engine = make_engine(url)
            yield engine, procs
            engine.dispose()
        finally:
            for _, proc in procs:
                if proc.poll() is None:
                    proc.terminate()
                    proc.wait(timeout=10)


def test_killing_the_leader_mid_scale_out_the_other_process_completes_it(
    two_apis: tuple[Engine, list[tuple[str, subprocess.Popen[bytes]]]],
) -> None:
    engine, procs = two_apis
    factory = make_sessionmaker(engine)
    admin = bearer(TOKEN)
    with httpx.Client(base_url=procs[0][0], timeout=30) as client:
        host = enroll_host(client, admin, name="leader-host")
        assert client.put("/v1/agent/inventory", headers=host.headers,
                          json=inventory(vcpus=64, ram_mb=65536, disk_gb=1000)).status_code == 200
        assert client.post("/v1/agent/heartbeat", headers=host.headers,
                           json={"observed": []}).status_code == 200
        flavor = make_flavor(client, admin)
        acct = make_account(client, admin)
        image = make_image(client, acct.headers)
        r = client.post("/v1/scaling-groups", headers=acct.headers, json={
            "name": "web", "launch": {"flavor": flavor["name"], "image": image["id"]},
            "min_size": 0, "max_size": 6, "desired": 6})
        assert r.status_code == 201, r.text
        group_id = r.json()["id"]

    def observe() -> tuple[list[int], list[str], int]:
        """(member sequence numbers, server names, servers of the project) right now."""
        with factory() as session:
            # One snapshot for both reads: under READ COMMITTED a launch committing between
            # them would show a server without its member row.
            if engine.dialect.name == "postgresql":
                session.connection(execution_options={"isolation_level": "REPEATABLE READ"})
            seqs = list(session.scalars(select(ScalingMember.seq)
                                        .where(ScalingMember.group_id == group_id)))
            names = list(session.scalars(select(Server.name)
                                         .where(Server.project_id == acct.project_id)))
            return seqs, names, len(names)

    def check() -> int:
        seqs, names, servers = observe()
        assert len(seqs) <= 6 and servers <= 6, (seqs, names)
        assert len(set(seqs)) == len(seqs) and len(set(names)) == len(names), (seqs, names)
        assert servers == len(seqs)  # no server without its member row, or the reverse
        return len(seqs)

    deadline = time.monotonic() + 60
    while check() < 2:
        assert time.monotonic() < deadline, "the leader never launched"
        time.sleep(0.02)
    with factory() as session:
        row = session.get(Lease, LEASE)
        assert row is not None
        leader_pid, term = int(row.holder.split(":")[1]), row.term
    leader = next(p for _, p in procs if p.pid == leader_pid)
    survivor = next(p for _, p in procs if p.pid != leader_pid)
    os.kill(leader_pid, signal.SIGKILL)
    leader.wait(timeout=10)
    at_kill = check()
    assert at_kill < 6, "the scale-out finished before the kill; the test proves nothing"

    deadline = time.monotonic() + 60
    while check() < 6:
        assert time.monotonic() < deadline, f"the survivor did not complete ({check()} of 6)"
        time.sleep(0.05)
    time.sleep(1.5)  # a few more passes of the survivor: nothing beyond max appears
    assert check() == 6
    seqs, names, _ = observe()
    assert sorted(seqs) == [1, 2, 3, 4, 5, 6]
    assert sorted(names) == [f"web-{i}" for i in range(1, 7)]
    with factory() as session:
        row = session.get(Lease, LEASE)
        assert row is not None
        assert int(row.holder.split(":")[1]) == survivor.pid and row.term == term + 1
    assert survivor.poll() is None
