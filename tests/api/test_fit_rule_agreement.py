"""The SQL claim and the in-memory resources filter agree on random inventories.

Both derive from ``scheduler.capacity``: the claim re-checks ``fit_rule`` built as SQL and run
by the real database (SQLite or PostgreSQL, whichever the session tests), the filter uses
``fit_bounds``, the same rule solved for the requested amount. For random totals, reserved
amounts, ratios (own or the pool's), unit limits, usage and requests on every resource class,
the claim succeeds exactly when the filter keeps the host, on numbers read back from the
database and on the same numbers given directly.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from hypothesis import HealthCheck, given
from hypothesis import settings as hypothesis_settings
from hypothesis import strategies as st
from sqlalchemy import insert
from sqlalchemy.orm import Session, sessionmaker

from api.config import Settings
from api.db import make_engine, make_sessionmaker, new_id
from api.models import Allocation, Host, Inventory
from api.scheduler.claim import ClaimOutcome, claim
from api.scheduler.snapshot import load_hosts, pool_ratios
from scheduler.filters.resources import ResourcesFilter
from scheduler.framework import HostState, InventoryState, RequestSpec, Snapshot
from scheduler.resources import NAMES
from tests.scheduler.db_factories import make_catalog, make_server


@pytest.fixture(scope="module")
def maker(settings: Settings) -> Iterator[sessionmaker[Session]]:
    """Sessions on the test database; every example rolls back what it wrote."""
    engine = make_engine(settings.effective_database_url)
    yield make_sessionmaker(engine)
    engine.dispose()


inventories = st.fixed_dictionaries({
    "total": st.integers(0, 200),
    # Mostly small; one in ten anywhere, even above the total (an agent may report less
    # than an admin reserved).
    "reserved": st.tuples(st.integers(0, 9), st.integers(0, 220)).map(
        lambda t: t[1] if t[0] == 0 else t[1] % 17),
    "ratio": st.one_of(st.none(), st.sampled_from([0.5, 1.0, 1.5, 4.0, 16.0]),
                       st.floats(0.05, 20.0, allow_nan=False)),
    "min_unit": st.sampled_from([1, 1, 1, 2, 4, 10]),
    "max_unit": st.sampled_from([None, None, None, 1, 8, 64, 250]),
    # A share of the capacity, often nearly full (so that the free capacity, not max_unit,
    # decides), or an absolute amount.
    "used": st.one_of(st.floats(0.75, 1.02, allow_nan=False), st.floats(0.0, 1.2),
                      st.integers(0, 300)),
})
# The requested amount: a plain number, or one placed around an edge of the rule (the free
# capacity, max_unit, min_unit) where an off-by-one would show.
amounts = st.one_of(st.tuples(st.just("free"), st.sampled_from([1, 0, -1, -5])),
                    st.tuples(st.sampled_from(["max", "min"]), st.sampled_from([1, 0, -1])),
                    st.integers(1, 80).map(lambda n: ("n", n)))
# Per class: its inventory (rarely none on this host) and the request (or not requested).
classes = st.fixed_dictionaries({
    # One class in six has no inventory on the host.
    rc: st.tuples(st.tuples(st.integers(0, 5), inventories).map(lambda t: t[1] if t[0] else None),
                  st.tuples(st.integers(0, 2), amounts).map(lambda t: t[1] if t[0] else None))
    for rc in NAMES}).filter(lambda c: any(amount is not None for _, amount in c.values()))


def used_of(inv: dict[str, Any], pool_ratio: float) -> int:
    """The amount allocated: as drawn, or the drawn share of the capacity."""
    if isinstance(inv["used"], int):
        return inv["used"]
    ratio = inv["ratio"] if inv["ratio"] is not None else pool_ratio
    return max(0, int((inv["total"] - inv["reserved"]) * ratio * inv["used"]))


def amount_of(anchor: tuple[str, int], inv: dict[str, Any] | None, pool_ratio: float) -> int:
    """The requested amount for ``anchor``, at least 1."""
    kind, n = anchor
    if kind == "n" or inv is None:
        return max(1, abs(n))
    ratio = inv["ratio"] if inv["ratio"] is not None else pool_ratio
    edge = {"free": int((inv["total"] - inv["reserved"]) * ratio) - used_of(inv, pool_ratio),
            "max": inv["max_unit"] if inv["max_unit"] is not None else inv["total"],
            "min": inv["min_unit"]}[kind]
    return max(1, edge + n)


@hypothesis_settings(max_examples=200, deadline=None,
                     suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(case=classes)
def test_sql_claim_and_in_memory_filter_agree(
        case: dict[str, tuple[dict[str, Any] | None, tuple[str, int] | None]],
        maker: sessionmaker[Session], settings: Settings) -> None:
    ratios = pool_ratios(settings)
    wanted = {rc: amount_of(anchor, inv, ratios[rc])
              for rc, (inv, anchor) in case.items() if anchor is not None}
    with maker() as s:
        catalog = make_catalog(s)
        holder, requester = make_server(s, catalog), make_server(s, catalog)
        host_id = new_id()
        s.execute(insert(Host).values(id=host_id, name=f"fit-{host_id[:8]}", enabled=True,
                                      generation=0, aggregates={}))
        given_states: dict[str, InventoryState] = {}
        for rc, (inv, _) in case.items():
            if inv is None:
                continue
            s.execute(insert(Inventory).values(
                id=new_id(), host_id=host_id, resource_class=rc, total=inv["total"],
                reserved=inv["reserved"], allocation_ratio=inv["ratio"],
                min_unit=inv["min_unit"], max_unit=inv["max_unit"]))
            used = used_of(inv, ratios[rc])
            if used:
                s.execute(insert(Allocation).values(
                    id=new_id(), server_id=holder, host_id=host_id, resource_class=rc,
                    used=used))
            # What the snapshot makes of the row: max_unit unset is the total, ratio unset
            # is the pool's.
            given_states[rc] = InventoryState(
                total=inv["total"], reserved=inv["reserved"],
                allocation_ratio=inv["ratio"] if inv["ratio"] is not None else ratios[rc],
                min_unit=inv["min_unit"],
                max_unit=inv["max_unit"] if inv["max_unit"] is not None else inv["total"],
                used=used)
        s.flush()

        spec = RequestSpec(server_id=requester, project_id=catalog.project_id, resources=wanted)
        read_back = load_hosts(s, settings, only=[host_id])
        direct = Snapshot(hosts=[HostState(id=host_id, name="h", inventories=given_states)],
                          now=read_back.now)
        kept_read_back = ResourcesFilter().prepare(spec, read_back)(read_back.hosts[0]) is None
        kept_direct = ResourcesFilter().prepare(spec, direct)(direct.hosts[0]) is None
        outcome = claim(s, server_id=requester, host_id=host_id, host_generation=0,
                        resources=wanted, pool_ratios=ratios)
        s.rollback()
    assert outcome in (ClaimOutcome.CLAIMED, ClaimOutcome.CAPACITY_CONFLICT)
    assert (outcome is ClaimOutcome.CLAIMED) == kept_read_back == kept_direct, (
        case, outcome, kept_read_back, kept_direct)
