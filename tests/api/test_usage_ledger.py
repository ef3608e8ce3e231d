"""The ledger and the SQL report path on a real database (SQLite or PostgreSQL).

Each test uses its own project ids and its own UTC month, so tests sharing the session's
database do not see each other's usage or rate cards.
"""

from __future__ import annotations

import random
import re
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta
from decimal import Decimal
from pathlib import Path

import pytest
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st
from sqlalchemy import select
from sqlalchemy.orm import Session, sessionmaker

from api.models import Flavor, LedgerEntry, UsagePiece
from api.usage import ledger, rates, reports
from api.usage.rules import Entry, Totals, epoch, from_epoch, pieces, window_totals
from tests.usage.test_rules_properties import brute_force

ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture
def db(client: TestClient) -> Iterator[Session]:
    """A unit of work on the test database, committed at the end like a request."""
    factory: sessionmaker[Session] = client.app.state.sessionmaker  # type: ignore[attr-defined]
    session = factory()
    try:
        yield session
        session.commit()
    finally:
        session.close()


def rec(session: Session, kind: str, project: str, server: str, at: datetime,
        size: tuple[int, int, int] = (1, 2048, 20), *, key: str | None = None,
        source: str = "agent", flavor_id: str | None = None,
        now: datetime | None = None) -> LedgerEntry | None:
    vcpus, ram, disk = size
    return ledger.record(
        session, kind=kind, project_id=project, server_id=server,  # type: ignore[arg-type]
        vcpus=vcpus, ram_mb=ram, disk_gb=disk, at=at,
        idempotency_key=key or f"{server}:{kind}:{at.isoformat()}",
        source=source, flavor_id=flavor_id, now=now,  # type: ignore[arg-type]
    )


def totals_of(line: dict[str, object]) -> Totals:
    return Totals(*(int(str(line[k])) for k in (
        "server_seconds", "running_seconds", "vcpu_seconds", "ram_mib_seconds",
        "disk_gib_seconds")))


# --- acceptance 2 at the ledger level: run, stop, start, resize, delete under two cards ---

T0 = datetime(2026, 3, 2, 10, 0, tzinfo=UTC)


def test_lifecycle_bills_exact_seconds_and_the_cost_of_the_card_in_force(db: Session) -> None:
    small = db.scalar(select(Flavor).where(Flavor.name == "small"))
    medium = db.scalar(select(Flavor).where(Flavor.name == "medium"))
    assert small is not None and medium is not None
    project, server = str(uuid.uuid4()), str(uuid.uuid4())
    s, m = (1, 2048, 20), (2, 4096, 40)

    def at(sec: int) -> datetime:
        return T0 + timedelta(seconds=sec)

    rates.create_rate_card(db, valid_from=datetime(2026, 3, 1, tzinfo=UTC), currency="EUR",
                           vcpu_hour=Decimal("0.036"), ram_gib_hour=Decimal("0.0072"),
                           disk_gib_hour=Decimal("0.00036"), created_by=None,
                           now=at(0), allow_past=True)
    rates.create_rate_card(db, valid_from=at(5000), currency="EUR",
                           vcpu_hour=Decimal("0.072"), ram_gib_hour=Decimal("0.0144"),
                           disk_gib_hour=Decimal("0.00072"),
                           flavor_hour={"medium": Decimal("0.5")}, created_by=None,
                           now=at(0), allow_past=True)
    for kind, sec, size, source, flavor in [
        ("created", 0, s, "api", small.id),
        ("running", 100, s, "agent", small.id),
        ("stopped", 3700, s, "agent", small.id),    # run 1: 3600 s small
        ("running", 7300, s, "agent", small.id),
        ("resized", 9100, m, "api", medium.id),     # run 2: 1800 s small + 1800 s medium
        ("stopped", 10900, m, "agent", medium.id),
        ("running", 14500, m, "agent", medium.id),  # run 3: 30 s, billed the 60 s minimum
        ("deleted", 14530, m, "api", medium.id),
    ]:
        assert rec(db, kind, project, server, at(sec), size, source=source, flavor_id=flavor,
                   now=at(20000)) is not None
    db.flush()
    report = reports.build_report(db, start=datetime(2026, 3, 1, tzinfo=UTC),
                                  end=datetime(2026, 4, 1, tzinfo=UTC), now=at(20000),
                                  minimum=60, project_id=project, group_by="server")
    [block] = report["projects"]
    [line] = block["servers"]
    # running: 3600 + 3600 + 30 + 30 extra; vcpu: 3600*1 + 1800*1 + 1800*2 + 60*2
    # ram: (3600 + 1800) * 2048 + (1800 + 60) * 4096
    # disk: 9100 s * 20 GiB (created..resize) + 5430 s * 40 GiB (resize..delete)
    assert totals_of(line) == Totals(server_seconds=14530, running_seconds=7260,
                                     vcpu_seconds=9120, ram_mib_seconds=18677760,
                                     disk_gib_seconds=399200)
    assert line["state"] == "deleted"
    assert line["first_seen"] == "2026-03-02T10:00:00Z"
    # Card A until +5000 s: run 1 vcpu 0.036 + ram 2 GiB-h * 0.0072 = 0.0144, disk
    #   5000*20/3600 GiB-h * 0.00036 = 0.01.
    # Card B after: run 2 small part 0.036 + 0.0144; medium at the flavor price 0.5/h:
    #   1800 s = 0.25, run 3 60 s = 0.008333...; disk (4100*20 + 5430*40)/3600 * 0.00072
    #   = 0.05984.  Sum 0.428973333... -> 0.428973
    assert line["cost"] == "0.428973"
    assert block["cost"] == "0.428973"
    assert report["currency"] == "EUR"


def test_a_paused_interval_is_billed_without_vcpu_in_the_sql_report(db: Session) -> None:
    medium = db.scalar(select(Flavor).where(Flavor.name == "medium"))
    assert medium is not None
    project, server, flat = str(uuid.uuid4()), str(uuid.uuid4()), str(uuid.uuid4())
    base = datetime(2026, 3, 5, tzinfo=UTC)
    size = (2, 2048, 20)
    rates.create_rate_card(db, valid_from=datetime(2026, 3, 5, tzinfo=UTC), currency="EUR",
                           vcpu_hour=Decimal("0.036"), ram_gib_hour=Decimal("0.0072"),
                           disk_gib_hour=Decimal("0.00036"), flavor_hour={"medium": Decimal(1)},
                           created_by=None, now=base, allow_past=True)
    for sid, flavor in ((server, None), (flat, medium.id)):
        for kind, sec in [("created", 0), ("running", 0), ("paused", 1800), ("running", 5400),
                          ("stopped", 7200)]:
            rec(db, kind, project, sid, base + timedelta(seconds=sec), size, flavor_id=flavor,
                now=base + timedelta(hours=3))
    db.flush()
    report = reports.build_report(db, start=base, end=base + timedelta(hours=2),
                                  now=base + timedelta(hours=3), minimum=60,
                                  project_id=project, group_by="server")
    lines = {s["server_id"]: s for s in report["projects"][0]["servers"]}
    line = lines[server]
    # running 1800 + 1800 s; paused 3600 s bills RAM (2 GiB) and disk (20 GiB), not vCPU.
    assert totals_of(line) == Totals(server_seconds=7200, running_seconds=3600,
                                     vcpu_seconds=7200, ram_mib_seconds=7200 * 2048,
                                     disk_gib_seconds=7200 * 20)
    # vcpu 2 x 1 h x 0.036 + ram 2 GiB x 2 h x 0.0072 + disk 20 GiB x 2 h x 0.00036
    assert line["cost"] == "0.115200"
    assert line["state"] == "stopped"
    # The flavor price (1/h) covers running time only; the paused hour still pays its RAM:
    # 1 h x 1 + ram 2 GiB x 1 h x 0.0072 + disk 20 GiB x 2 h x 0.00036
    assert totals_of(lines[flat]) == totals_of(line)
    assert lines[flat]["cost"] == "1.028800"


def test_a_future_price_change_changes_no_earlier_report(db: Session) -> None:
    project, server = str(uuid.uuid4()), str(uuid.uuid4())
    base = datetime(2026, 3, 10, tzinfo=UTC)
    rec(db, "created", project, server, base, source="api")
    rec(db, "running", project, server, base + timedelta(seconds=10))
    window = {"start": datetime(2026, 3, 10, tzinfo=UTC), "end": datetime(2026, 3, 11, tzinfo=UTC),
              "now": datetime(2026, 3, 20, tzinfo=UTC), "minimum": 60, "project_id": project,
              "group_by": "server"}
    before = reports.render_json(reports.build_report(db, **window))  # type: ignore[arg-type]
    rates.create_rate_card(db, valid_from=datetime(2026, 3, 11, tzinfo=UTC), currency="EUR",
                           vcpu_hour=Decimal("9"), ram_gib_hour=Decimal("9"),
                           disk_gib_hour=Decimal("9"), created_by=None,
                           now=datetime(2026, 3, 10, 12, tzinfo=UTC))
    assert reports.render_json(reports.build_report(db, **window)) == before  # type: ignore[arg-type]


# --- agent clocks, duplicates, late and out-of-order reports ---

def test_agent_times_are_clamped_to_the_api_bounds_and_flagged(db: Session) -> None:
    project, server = str(uuid.uuid4()), str(uuid.uuid4())
    now = datetime(2026, 3, 15, 12, tzinfo=UTC)
    rec(db, "created", project, server, now - timedelta(hours=1), source="api", now=now)
    early = rec(db, "running", project, server, now - timedelta(days=3), now=now)
    future = rec(db, "stopped", project, server, now + timedelta(days=1), now=now)
    assert early is not None and future is not None
    assert early.clamped and early.at == now - timedelta(hours=1)
    assert early.reported_at == now - timedelta(days=3)
    assert future.clamped and future.at == now and future.reported_at == now + timedelta(days=1)
    db.flush()
    t = window_totals(pieces([Entry(e.seq, e.at_s, e.kind, e.vcpus, e.ram_mb, e.disk_gb)
                              for e in db.scalars(select(LedgerEntry)
                                                  .where(LedgerEntry.server_id == server))]),
                      epoch(now) - 86400 * 5, epoch(now) + 86400 * 5, epoch(now), 0)
    assert t.running_seconds == 3600  # never before creation, never after now


def test_the_same_idempotency_key_twice_changes_nothing(db: Session) -> None:
    project, server = str(uuid.uuid4()), str(uuid.uuid4())
    at = datetime(2026, 3, 16, tzinfo=UTC)
    assert rec(db, "created", project, server, at, key=f"k-{server}", source="api")
    assert rec(db, "created", project, server, at + timedelta(hours=1), key=f"k-{server}") is None
    assert len(list(db.scalars(select(LedgerEntry).where(LedgerEntry.server_id == server)))) == 1


BASE = datetime(2026, 1, 31, 23, 50, tzinfo=UTC)
NOW = BASE + timedelta(hours=1)


@st.composite
def fleets(draw: st.DrawFn) -> list[list[tuple[str, int, tuple[int, int, int]]]]:
    """Servers, each a created entry then agent/api entries at distinct later seconds."""
    out = []
    for _ in range(draw(st.integers(1, 5))):
        seconds = draw(st.lists(st.integers(1, 3000), min_size=0, max_size=10, unique=True))
        created = draw(st.integers(0, 300))
        steps = [("created", created, (1, 512, 1))]
        for sec in sorted(seconds):
            kind = draw(st.sampled_from(["running", "stopped", "running", "host_down",
                                         "resized", "deleted", "paused"]))
            size = (draw(st.integers(1, 4)), draw(st.sampled_from([512, 2048])),
                    draw(st.sampled_from([1, 20])))
            steps.append((kind, created + sec, size))
        out.append(steps)
    return out


@settings(max_examples=25, deadline=None,
          suppress_health_check=[HealthCheck.function_scoped_fixture, HealthCheck.too_slow])
@given(fleets(), st.randoms(use_true_random=False),
       st.lists(st.integers(0, 3700), min_size=2, max_size=2).map(sorted))
def test_sql_reports_match_the_rules_whatever_the_arrival_order(
    db: Session, fleet: list[list[tuple[str, int, tuple[int, int, int]]]],
    rnd: random.Random, cut: list[int],
) -> None:
    project = str(uuid.uuid4())
    expected: dict[str, list[Entry]] = {}
    deliveries = []
    for steps in fleet:
        server = str(uuid.uuid4())
        expected[server] = [Entry(i, epoch(BASE) + sec, kind, *size)
                            for i, (kind, sec, size) in enumerate(steps)]
        # created is recorded by the API before any agent can see the server
        rec(db, "created", project, server, BASE + timedelta(seconds=steps[0][1]),
            steps[0][2], source="api", now=NOW)
        for kind, sec, size in steps[1:]:
            deliveries.append((kind, project, server, BASE + timedelta(seconds=sec), size))
    # every later report delivered twice (retries), in random order (late, out of order)
    deliveries = deliveries + deliveries
    rnd.shuffle(deliveries)
    for kind, p, server, at, size in deliveries:
        rec(db, kind, p, server, at, size, now=NOW)
    db.flush()
    a, b = epoch(BASE) + cut[0], epoch(BASE) + cut[1] + 1
    report = reports.build_report(db, start=from_epoch(a), end=from_epoch(b), now=NOW,
                                  minimum=60, project_id=project, group_by="server")
    lines = {s["server_id"]: totals_of(s) for blk in report["projects"] for s in blk["servers"]}
    total = Totals()
    for server, entries in expected.items():
        want = window_totals(pieces(entries), a, b, epoch(NOW), 60)
        assert want == brute_force(entries, a, b, epoch(NOW), 60)  # the independent count
        assert lines.get(server, Totals()) == want
        total = total + want
    if report["projects"]:
        assert totals_of(report["projects"][0]) == total  # lines add up to the project
    else:
        assert total == Totals()


def test_derived_rows_are_rebuilt_from_the_ledger_alone(db: Session) -> None:
    project, server = str(uuid.uuid4()), str(uuid.uuid4())
    at = datetime(2026, 3, 20, tzinfo=UTC)
    rec(db, "created", project, server, at, source="api")
    rec(db, "running", project, server, at + timedelta(seconds=5))
    rec(db, "stopped", project, server, at + timedelta(seconds=50))
    db.flush()

    def rows() -> list[tuple[object, ...]]:
        return sorted((p.resource, p.start_s, p.end_s, p.vcpus, p.server_id) for p in db.scalars(
            select(UsagePiece).where(UsagePiece.project_id == project)))

    before = rows()
    assert before
    ledger.rebuild(db)
    assert rows() == before


def test_nothing_in_the_code_updates_or_deletes_ledger_rows() -> None:
    # The ledger is append-only: no UPDATE or DELETE of usage_ledger / LedgerEntry anywhere.
    pattern = re.compile(
        r"(update|delete)\(\s*LedgerEntry|(UPDATE|DELETE\s+FROM)\s+usage_ledger|"
        r"session\.delete\(\s*(entry|ledger)", re.IGNORECASE)
    offenders = [str(p) for d in ("api", "compute_agent", "scheduler", "cli")
                 for p in (ROOT / d).rglob("*.py") if pattern.search(p.read_text())]
    assert offenders == []
