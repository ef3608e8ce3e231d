"""place() against a real database: claims, refusals, admin changes, and concurrent storms.

Each test gets an empty pool in a database of its own (this module's), so counts are exact.
The storms run many threads, each with its own session, and on both backends also two OS
processes, the way several API workers would.
"""

from __future__ import annotations

import multiprocessing
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor, ThreadPoolExecutor
from pathlib import Path

import pytest
from sqlalchemy import delete, func, select, text, update
from sqlalchemy.orm import Session, sessionmaker

from api.config import Settings
from api.db import make_engine, make_sessionmaker
from api.migrate import upgrade
from api.models import Allocation, Host, Inventory, Server, ServerGroup
from api.scheduler.claim import ClaimOutcome, claim
from api.scheduler.placement import NoValidHost, place
from api.scheduler.snapshot import SnapshotCache, load_hosts, pool_ratios
from scheduler.framework import Snapshot
from tests.db import backend, fresh_database
from tests.scheduler.db_factories import (
    Catalog,
    make_catalog,
    make_group,
    make_host,
    make_server,
    spec_for,
)


@pytest.fixture(scope="module")
def pool_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A database of this module's own, at head."""
    with fresh_database(tmp_path_factory.mktemp("pool")) as url:
        upgrade(url)
        yield url


@pytest.fixture
def factory(pool_url: str) -> Iterator[sessionmaker[Session]]:
    """Sessions on an emptied pool."""
    engine = make_engine(pool_url)
    maker = make_sessionmaker(engine)
    with maker.begin() as s:
        for model in (Allocation, Server, ServerGroup, Inventory, Host):
            s.execute(delete(model))
    yield maker
    engine.dispose()


@pytest.fixture
def settings(pool_url: str, tmp_path: Path) -> Settings:
    """Settings on this module's database (pool defaults: cpu 4.0, ram 1.0, disk 1.0)."""
    return Settings(database_url=pool_url, data_dir=tmp_path)


def new_catalog(factory: sessionmaker[Session]) -> Catalog:
    with factory.begin() as s:
        return make_catalog(s)


def create(factory: sessionmaker[Session], settings: Settings, catalog: Catalog, *,
           group: tuple[str, str] | None = None, zone: str | None = None,
           request_id: str = "req", ram_mb: int = 1024, explain: bool = False) -> str:
    """What POST /v1/servers does: server row + place() in one transaction.

    Returns the host id, or ``"!"`` + the NoValidHost detail (nothing is committed then).
    """
    with factory() as s:
        try:
            sid = make_server(s, catalog, ram_mb=ram_mb, group_id=group[0] if group else None)
            spec = spec_for(sid, catalog, ram_mb=ram_mb, zone=zone,
                            group_id=group[0] if group else None,
                            policy=group[1] if group else None)
            result = place(s, settings, spec, request_id=request_id, explain_hosts=explain)
            s.execute(update(Server).where(Server.id == sid).values(host_id=result.host_id))
            s.commit()
            return result.host_id
        except NoValidHost:
            s.rollback()
            raise


def used_by_host(factory: sessionmaker[Session]) -> dict[tuple[str, str], int]:
    """Allocations summed per (host, class), recomputed from the rows."""
    with factory() as s:
        rows = s.execute(select(Allocation.host_id, Allocation.resource_class,
                                func.sum(Allocation.used))
                         .group_by(Allocation.host_id, Allocation.resource_class)).all()
    return {(h, rc): int(n) for h, rc, n in rows}


def test_place_writes_one_allocation_per_class_and_records_the_decision(
        factory: sessionmaker[Session], settings: Settings) -> None:
    catalog = new_catalog(factory)
    with factory.begin() as s:
        small = make_host(s, name="small", ram_mb=4096)
        big = make_host(s, name="big", ram_mb=8192)
    with factory() as s:
        sid = make_server(s, catalog)
        result = place(s, settings, spec_for(sid, catalog), request_id="r1")
        s.commit()
    # Spread: big has 8192 free MB vs 4096 -> ram weight 1.0 vs 0.0; vCPU equal -> 0 for both.
    assert result.host_id == big
    assert result.decision["hosts"] == 2 and result.decision["candidates"] == 2
    assert [t["host_id"] for t in result.decision["top"]] == [big, small]
    assert result.decision["top"][0]["ram"] == 1.0
    assert used_by_host(factory) == {(big, "VCPU"): 1, (big, "MEMORY_MB"): 1024,
                                     (big, "DISK_GB"): 10}


def test_no_valid_host_adds_up_refusals_and_hides_names_from_tenants(
        factory: sessionmaker[Session], settings: Settings) -> None:
    catalog = new_catalog(factory)
    with factory.begin() as s:
        for _ in range(7):
            make_host(s, ram_mb=512)
        for _ in range(3):
            make_host(s, enabled=False)
        make_host(s, name="silent", heartbeat_age=3600)
    with pytest.raises(NoValidHost) as refused:
        create(factory, settings, catalog)
    # Per filter plugin: status refused 3 disabled + 1 down = 4, resources the 7 small ones.
    assert refused.value.extra == {"hosts": 11, "refusals": {
        "disabled": 3, "down": 1, "not_enough_MEMORY_MB": 7},
        "refusals_by_filter": {"resources": 7, "status": 4}}
    assert refused.value.detail == "11 hosts: 7 not enough MEMORY_MB, 3 disabled, " \
                                   "1 down (no recent heartbeat)"
    with pytest.raises(NoValidHost) as for_admin:
        create(factory, settings, catalog, explain=True)
    per_host = for_admin.value.extra["per_host"]
    assert {"host": "silent", "reason": "down"}.items() <= per_host[-1].items()
    with factory() as s:
        assert s.scalar(select(func.count()).select_from(Server)) == 0


def test_admin_ratio_change_and_disable_take_effect_on_next_placement(
        factory: sessionmaker[Session], settings: Settings) -> None:
    catalog = new_catalog(factory)
    with factory.begin() as s:
        host = make_host(s, ram_mb=1024)
    assert create(factory, settings, catalog) == host
    # RAM 1024 * 1.0 = 1024, 1024 used: the second server does not fit ...
    with pytest.raises(NoValidHost):
        create(factory, settings, catalog)
    # ... until the admin overcommits RAM 2.0: 1024 + 1024 <= 1024 * 2.0.
    with factory.begin() as s:
        s.execute(update(Inventory).where(Inventory.host_id == host,
                                          Inventory.resource_class == "MEMORY_MB")
                  .values(allocation_ratio=2.0))
    assert create(factory, settings, catalog) == host
    with factory.begin() as s:
        s.execute(update(Host).where(Host.id == host).values(enabled=False))
        s.execute(update(Inventory).where(Inventory.host_id == host,
                                          Inventory.resource_class == "MEMORY_MB")
                  .values(allocation_ratio=4.0))
    with pytest.raises(NoValidHost) as refused:
        create(factory, settings, catalog)
    assert refused.value.extra["refusals"] == {"disabled": 1}


def test_pool_default_ratio_from_settings(factory: sessionmaker[Session],
                                          settings: Settings) -> None:
    catalog = new_catalog(factory)
    with factory.begin() as s:
        host = make_host(s, vcpus=1, ram_mb=8192)
    # VCPU 1 * 4.0 = 4 servers of 1 vCPU; the 5th is refused for VCPU.
    for n in range(4):
        assert create(factory, settings, catalog, request_id=f"r{n}") == host
    with pytest.raises(NoValidHost) as refused:
        create(factory, settings, catalog)
    assert refused.value.extra["refusals"] == {"not_enough_VCPU": 1}
    tight = settings.model_copy(update={"cpu_allocation_ratio": 1.0})
    with pytest.raises(NoValidHost):
        create(factory, tight, catalog)


def test_claim_rechecks_capacity_when_a_ratio_drops_without_a_generation_bump(
        factory: sessionmaker[Session], settings: Settings) -> None:
    catalog = new_catalog(factory)
    with factory.begin() as s:
        host = make_host(s, ram_mb=2048)
        sid = make_server(s, catalog)
    with factory() as s:
        seen = load_hosts(s, settings).hosts[0]
        # Another transaction lowers the ratio after the snapshot, without bumping the host's
        # generation: 0 + 1024 <= 2048 * 0.25 is false, so the SQL re-check refuses the claim.
        with factory.begin() as other:
            other.execute(update(Inventory).where(Inventory.host_id == host,
                                                  Inventory.resource_class == "MEMORY_MB")
                          .values(allocation_ratio=0.25))
        outcome = claim(s, server_id=sid, host_id=host, host_generation=seen.generation,
                        resources={"VCPU": 1, "MEMORY_MB": 1024, "DISK_GB": 10},
                        pool_ratios=pool_ratios(settings))
        assert outcome is ClaimOutcome.CAPACITY_CONFLICT
        # place() re-reads and explains instead.
        with pytest.raises(NoValidHost) as refused:
            place(s, settings, spec_for(sid, catalog), request_id="r")
    assert refused.value.extra["refusals"] == {"not_enough_MEMORY_MB": 1}
    assert used_by_host(factory) == {}


def test_replaying_a_request_on_the_same_snapshot_picks_the_same_host(
        factory: sessionmaker[Session], settings: Settings) -> None:
    catalog = new_catalog(factory)
    with factory.begin() as s:
        for _ in range(8):
            make_host(s)
    # Eight equal hosts: the pick is the seeded tie-break alone.
    picks = set()
    for _ in range(3):
        with factory() as s:
            sid = make_server(s, catalog)
            picks.add(place(s, settings, spec_for(sid, catalog), request_id="same").host_id)
            s.rollback()
    assert len(picks) == 1


def _storm_worker(url: str, data_dir: str, catalog: Catalog, count: int, tag: str,
                  group: tuple[str, str] | None) -> list[str]:
    """Run ``count`` concurrent creates in this process; returns host ids or ``!`` + detail."""
    settings = Settings(database_url=url, data_dir=Path(data_dir))
    engine = make_engine(url)
    maker = make_sessionmaker(engine)

    def one(n: int) -> str:
        try:
            return create(maker, settings, catalog, group=group, request_id=f"{tag}-{n}")
        except NoValidHost as exc:
            return "!" + exc.detail

    with ThreadPoolExecutor(max_workers=16) as pool:
        results = list(pool.map(one, range(count)))
    engine.dispose()
    return results


def storm(settings: Settings, catalog: Catalog, total: int,
          group: tuple[str, str] | None = None) -> list[str]:
    """``total`` creates at once: half from this process's threads, half from another process."""
    url, data_dir = settings.effective_database_url, str(settings.data_dir)
    half = total // 2
    ctx = multiprocessing.get_context("spawn")
    with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as other:
        remote = other.submit(_storm_worker, url, data_dir, catalog, total - half, "p", group)
        local = _storm_worker(url, data_dir, catalog, half, "t", group)
        return local + remote.result(timeout=300)


@pytest.mark.slow
def test_storm_of_200_onto_a_pool_that_fits_exactly_100(
        factory: sessionmaker[Session], settings: Settings) -> None:
    catalog = new_catalog(factory)
    with factory.begin() as s:
        # 10 hosts x RAM 10240 MB / 1024 MB = exactly 10 servers each (VCPU 4 * 4.0 = 16 and
        # DISK 200 / 10 = 20 are not the limit), plus 2 disabled and 1 silent host.
        hosts = [make_host(s) for _ in range(10)]
        for _ in range(2):
            make_host(s, enabled=False)
        make_host(s, heartbeat_age=3600)
    results = storm(settings, catalog, 200)

    placed = Counter(r for r in results if not r.startswith("!"))
    refused = Counter(r for r in results if r.startswith("!"))
    assert sum(placed.values()) == 100
    assert placed == {h: 10 for h in hosts}
    assert refused == {"!13 hosts: 10 not enough MEMORY_MB, 2 disabled, "
                       "1 down (no recent heartbeat)": 100}
    used = used_by_host(factory)
    for h in hosts:
        assert used[(h, "MEMORY_MB")] == 10240  # == capacity, never above
        assert used[(h, "VCPU")] == 10 and used[(h, "DISK_GB")] == 100
    with factory() as s:
        assert s.scalar(select(func.count()).select_from(Server)) == 100
        assert {h.id: h.inventories["MEMORY_MB"].free for h in load_hosts(s, settings).hosts
                if h.id in hosts} == {h: 0.0 for h in hosts}


@pytest.mark.slow
def test_anti_affinity_storm_puts_10_of_20_on_10_distinct_hosts(
        factory: sessionmaker[Session], settings: Settings) -> None:
    catalog = new_catalog(factory)
    with factory.begin() as s:
        hosts = [make_host(s) for _ in range(10)]
        group = make_group(s, catalog, "anti-affinity")
    results = storm(settings, catalog, 20, group=(group, "anti-affinity"))

    placed = [r for r in results if not r.startswith("!")]
    refused = [r for r in results if r.startswith("!")]
    assert sorted(placed) == sorted(hosts)  # ten servers, ten different hosts
    assert refused == ["!10 hosts: 10 anti-affinity"] * 10
    with factory() as s:
        members = s.execute(select(Allocation.host_id, func.count(func.distinct(
            Allocation.server_id))).group_by(Allocation.host_id)).all()
    assert {h: n for h, n in members} == {h: 1 for h in hosts}


def test_hard_affinity_follows_the_first_member(factory: sessionmaker[Session],
                                                settings: Settings) -> None:
    catalog = new_catalog(factory)
    with factory.begin() as s:
        for _ in range(5):
            make_host(s)
        group = make_group(s, catalog, "affinity")
    first = create(factory, settings, catalog, group=(group, "affinity"), request_id="a")
    for n in range(9):
        assert create(factory, settings, catalog, group=(group, "affinity"),
                      request_id=f"b{n}") == first
    # The members' host is full now (10 x 1024 MB): the others are refused for affinity.
    with pytest.raises(NoValidHost) as refused:
        create(factory, settings, catalog, group=(group, "affinity"))
    assert refused.value.extra["refusals"] == {"affinity": 4, "not_enough_MEMORY_MB": 1}



def test_freed_allocations_are_seen_although_they_bump_no_generation(
        factory: sessionmaker[Session], settings: Settings) -> None:
    catalog = new_catalog(factory)
    with factory.begin() as s:
        host = make_host(s, ram_mb=1024)
    assert create(factory, settings, catalog) == host  # RAM full: 1024 of 1024
    with factory.begin() as s:
        # A deletion frees the allocation without touching the host row: the cached copy of
        # the pool still says "full", so place() must re-read before refusing.
        s.execute(delete(Allocation))
        s.execute(delete(Server))
    assert create(factory, settings, catalog) == host


def test_a_zone_change_that_bumps_the_generation_is_seen_by_the_cache(
        factory: sessionmaker[Session], settings: Settings) -> None:
    catalog = new_catalog(factory)
    with factory.begin() as s:
        host = make_host(s, zone="az-old")
    assert create(factory, settings, catalog, zone="az-old") == host
    with factory.begin() as s:
        s.execute(update(Host).where(Host.id == host)
                  .values(availability_zone="az-new", generation=Host.generation + 1))
    assert create(factory, settings, catalog, zone="az-new") == host
    with pytest.raises(NoValidHost) as refused:
        create(factory, settings, catalog, zone="az-old")
    assert refused.value.extra["refusals"] == {"availability_zone": 1}


def test_no_valid_host_renders_as_a_problem_document(factory: sessionmaker[Session],
                                                     settings: Settings) -> None:
    from fastapi.testclient import TestClient

    from api.main import create_app

    catalog = new_catalog(factory)
    with factory.begin() as s:
        make_host(s, name="secret-host-name", ram_mb=512)
    app = create_app(settings)

    # A stand-in for POST /v1/servers (built elsewhere): the same error, through the real
    # error handler.
    @app.post("/_test/place")
    def _place(admin: bool = False) -> dict[str, str]:
        return {"host": create(factory, settings, catalog, explain=admin)}

    with TestClient(app) as client:
        r = client.post("/_test/place")
        assert r.status_code == 409
        assert r.headers["content-type"] == "application/problem+json"
        body = r.json()
        assert (body["code"], body["hosts"], body["refusals"]) == (
            "no_valid_host", 1, {"not_enough_MEMORY_MB": 1})
        assert body["detail"] == "1 host: 1 not enough MEMORY_MB"
        assert "secret-host-name" not in r.text
        r = client.post("/_test/place", params={"admin": True})
        assert r.json()["per_host"][0]["host"] == "secret-host-name"


def _as_seen(snapshot: Snapshot) -> dict[str, tuple[int, dict[str, int]]]:
    return {h.id: (h.generation, {rc: inv.used for rc, inv in h.inventories.items()})
            for h in snapshot.hosts}


def test_two_process_caches_follow_each_others_claims_and_forgotten_hosts_exactly(
        factory: sessionmaker[Session], settings: Settings) -> None:
    # Two copies of the pool, as two API processes hold: each must see what the other
    # claimed (re-reading only the hosts that moved), and a host forgotten after a lost
    # claim is re-read, never handed out with the placeholder generation.
    catalog = new_catalog(factory)
    with factory.begin() as s:
        hosts = [make_host(s) for _ in range(4)]
    ours, theirs = SnapshotCache(), SnapshotCache()

    def fresh() -> dict[str, tuple[int, dict[str, int]]]:
        with factory() as s:
            return _as_seen(load_hosts(s, settings))

    def cached(cache: SnapshotCache) -> dict[str, tuple[int, dict[str, int]]]:
        with factory() as s:
            return _as_seen(cache.load(s, settings))

    assert cached(ours) == cached(theirs) == fresh()
    for n, host in enumerate([hosts[0], hosts[1], hosts[1]]):
        with factory.begin() as s:
            sid = make_server(s, catalog)
            state = next(h for h in ours.load(s, settings).hosts if h.id == host)
            resources = {"VCPU": 1, "MEMORY_MB": 512 * (n + 1), "DISK_GB": 1}
            assert claim(s, server_id=sid, host_id=host, host_generation=state.generation,
                         resources=resources, pool_ratios=pool_ratios(settings)
                         ) is ClaimOutcome.CLAIMED
            ours.claimed(s, state, resources)  # applied to our copy on commit
        assert cached(ours) == fresh()
        assert cached(theirs) == fresh()
    expected = fresh()
    assert expected[hosts[1]][1]["MEMORY_MB"] == 512 * 2 + 512 * 3
    # A lost claim forgets the host; an admin change elsewhere moved another one meanwhile.
    theirs.forget(hosts[2])
    with factory.begin() as s:
        s.execute(update(Host).where(Host.id == hosts[3])
                  .values(availability_zone="az-2", generation=Host.generation + 1))
    for cache in (theirs, ours):
        with factory() as s:
            snapshot = cache.load(s, settings)
        assert _as_seen(snapshot) == fresh()
        assert {h.availability_zone for h in snapshot.hosts if h.id == hosts[3]} == {"az-2"}
        assert min(h.generation for h in snapshot.hosts) >= 0


def test_a_copy_follows_a_notified_claim_from_exactly_the_generation_it_holds(
        factory: sessionmaker[Session], settings: Settings) -> None:
    # On PostgreSQL another API process's claim reaches this one's copy through its
    # notification (``followed``): the copy then matches the database again, and the next
    # load reads the one-row fingerprint only. A note about a generation the copy does not
    # hold (late, repeated, or about a host it re-read since) changes nothing.
    from sqlalchemy import event

    catalog = new_catalog(factory)
    with factory.begin() as s:
        hosts = [make_host(s) for _ in range(2)]
    ours, theirs = SnapshotCache(), SnapshotCache()
    with factory() as s:
        state = next(h for h in ours.load(s, settings).hosts if h.id == hosts[0])
        theirs.load(s, settings)
    resources = {"VCPU": 2, "MEMORY_MB": 1536, "DISK_GB": 3}
    with factory.begin() as s:
        sid = make_server(s, catalog)
        assert claim(s, server_id=sid, host_id=hosts[0], host_generation=state.generation,
                     resources=resources, pool_ratios=pool_ratios(settings)
                     ) is ClaimOutcome.CLAIMED
        ours.claimed(s, state, resources)
    theirs.followed(hosts[0], state.generation, resources)
    theirs.followed(hosts[0], state.generation, resources)  # the same note again
    theirs.followed(hosts[1], state.generation + 5, resources)  # a generation it never held
    sent: list[str] = []

    def count(conn: object, cursor: object, statement: str, *args: object) -> None:
        sent.append(statement)

    engine = factory.kw["bind"]
    event.listen(engine, "before_cursor_execute", count)
    try:
        with factory() as s:
            snapshot = theirs.load(s, settings)
    finally:
        event.remove(engine, "before_cursor_execute", count)
    with factory() as s:
        assert _as_seen(snapshot) == _as_seen(load_hosts(s, settings))
    assert len(sent) == 1 and "sum(hosts.generation)" in sent[0]
    assert "string_agg" not in sent[0]
    followed = next(h for h in snapshot.hosts if h.id == hosts[0])
    assert followed.inventories["MEMORY_MB"].used == 1536


def test_the_cache_rereads_only_the_liveness_of_hosts_it_shows_down(
        factory: sessionmaker[Session], settings: Settings) -> None:
    # A heartbeating fleet moves every host's heartbeat all the time; the copy shows a host
    # up as long as its cached heartbeat is within the down limit (the real one is never
    # older), so only the hosts it shows down are read again, and a host that came back is
    # then seen up.
    from sqlalchemy import event

    from api.db import utcnow

    with factory.begin() as s:
        up = [make_host(s) for _ in range(4)]
        silent = make_host(s, heartbeat_age=3600.0)
    cache = SnapshotCache()
    cache.HEARTBEAT_REFRESH = 0.0  # every load looks at the suspects (no waiting in a test)
    with factory() as s:
        first = {h.id: h.last_heartbeat for h in cache.load(s, settings).hosts}
    assert first[silent] is not None and first[silent] < utcnow().timestamp() - 3000
    with factory.begin() as s:  # every host beats again, the silent one too
        s.execute(update(Host).values(last_heartbeat_at=utcnow()))
    sent: list[tuple[str, object]] = []

    def count(conn: object, cursor: object, statement: str, parameters: object,
              *args: object) -> None:
        sent.append((statement, parameters))

    engine = factory.kw["bind"]
    event.listen(engine, "before_cursor_execute", count)
    try:
        with factory() as s:
            second = {h.id: h.last_heartbeat for h in cache.load(s, settings).hosts}
    finally:
        event.remove(engine, "before_cursor_execute", count)
    liveness = [(statement, parameters) for statement, parameters in sent
                if "last_heartbeat_at" in statement]
    assert len(liveness) == 1
    assert silent in str(liveness[0][1]) and not any(h in str(liveness[0][1]) for h in up)
    # The host that came back is up in the copy; the others keep their cached heartbeat.
    assert second[silent] is not None and second[silent] > utcnow().timestamp() - 60
    assert all(second[h] == first[h] for h in up)
    with factory() as s:
        assert {h.id for h in cache.load(s, settings).hosts} == {*up, silent}


@pytest.mark.skipif(backend() != "postgresql", reason="row locks are PostgreSQL's")
def test_a_first_try_skips_a_host_row_another_claim_holds_and_takes_no_lock(
        factory: sessionmaker[Session], settings: Settings) -> None:
    catalog = new_catalog(factory)
    with factory.begin() as s:
        host = make_host(s)
        first, second = make_server(s, catalog), make_server(s, catalog)
        generation = s.scalar(select(Host.generation).where(Host.id == host))
    assert generation is not None
    resources = {"VCPU": 1, "MEMORY_MB": 1024, "DISK_GB": 10}
    ratios = pool_ratios(settings)
    with factory() as winner, factory() as loser:
        assert claim(winner, server_id=first, host_id=host, host_generation=generation,
                     resources=resources, pool_ratios=ratios) is ClaimOutcome.CLAIMED
        # The winner's transaction is open and holds the row: the loser skips it at once.
        assert claim(loser, server_id=second, host_id=host, host_generation=generation,
                     resources=resources, pool_ratios=ratios, wait=False
                     ) is ClaimOutcome.HOST_HELD
        assert loser.scalar(select(func.count()).select_from(Allocation)
                            .where(Allocation.server_id == second)) == 0
        winner.rollback()
        # The loser's transaction is still open and took no lock on the row.
        with factory() as third:
            third.execute(text("SET LOCAL lock_timeout = '2s'"))
            assert third.scalar(select(Host.id).where(Host.id == host)
                                .with_for_update()) == host
        # Now the row is free: the same try claims it.
        assert claim(loser, server_id=second, host_id=host, host_generation=generation,
                     resources=resources, pool_ratios=ratios, wait=False
                     ) is ClaimOutcome.CLAIMED
