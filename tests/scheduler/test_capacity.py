"""The fit rule: the SQL form and the Python form agree on every input."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st
from sqlalchemy import Engine, insert, literal, select

from api.db import Base, make_engine
from api.models import Allocation, Host, Inventory
from api.scheduler.claim import fit_clause
from scheduler.capacity import fit_bounds, fits, how_many
from scheduler.framework import InventoryState

_ENGINE: list[Engine] = []


def engine() -> Engine:
    # An in-memory SQLite only to evaluate expressions: no rows of the test database involved.
    if not _ENGINE:
        e = make_engine("sqlite://")
        tables = [Host.__table__, Inventory.__table__, Allocation.__table__]
        Base.metadata.create_all(e, tables=tables)  # type: ignore[arg-type]
        with e.begin() as c:
            c.execute(insert(Host).values(id="h", name="h"))
        _ENGINE.append(e)
    return _ENGINE[0]


@settings(max_examples=150, deadline=None)
@given(total=st.integers(0, 10_000), reserved=st.integers(0, 2_000),
       ratio=st.sampled_from([None, 0.5, 1.0, 1.5, 4.0, 16.0]),
       min_unit=st.integers(1, 8), max_unit=st.one_of(st.none(), st.integers(1, 10_000)),
       requested=st.integers(1, 12_000))
def test_sql_fit_clause_equals_python_fits(total: int, reserved: int, ratio: float | None,
                                           min_unit: int, max_unit: int | None,
                                           requested: int) -> None:
    pool_ratio = 4.0
    with engine().begin() as c:
        c.execute(Inventory.__table__.delete())
        c.execute(insert(Inventory).values(id="i", host_id="h", resource_class="VCPU",
                                           total=total, reserved=reserved,
                                           allocation_ratio=ratio, min_unit=min_unit,
                                           max_unit=max_unit))
        in_sql = c.scalar(select(fit_clause(literal(requested), {"VCPU": pool_ratio})))
    # No allocations: used = 0. max_unit unset means total, the ratio unset means the pool's.
    in_python = fits(0, requested, total, reserved, ratio if ratio is not None else pool_ratio,
                     min_unit, max_unit if max_unit is not None else total)
    assert bool(in_sql) == in_python


@given(total=st.integers(1, 1000), used=st.integers(0, 1000), reserved=st.integers(0, 100),
       ratio=st.sampled_from([1.0, 1.5, 4.0]), requested=st.integers(1, 64))
def test_resources_filter_arithmetic_equals_fits(total: int, used: int, reserved: int,
                                                 ratio: float, requested: int) -> None:
    # The filter tests ``used + requested <= capacity`` on the precomputed capacity.
    state = InventoryState(total, reserved, ratio, 1, 10_000, used)
    assert (state.used + requested <= state.capacity) == fits(used, requested, total, reserved,
                                                               ratio, 1, 10_000)


def test_how_many_follows_the_fit_rule() -> None:
    # free 10240 MB / 1024 MB = 10; free 1023 -> 0; outside max_unit -> 0
    assert how_many(10240.0, 1024, 1, 16384) == 10
    assert how_many(1023.0, 1024, 1, 16384) == 0
    assert how_many(10240.0, 1024, 1, 512) == 0


@given(total=st.integers(0, 1000), used=st.integers(0, 4000), reserved=st.integers(0, 1100),
       ratio=st.one_of(st.sampled_from([0.5, 1.0, 1.5, 4.0]), st.floats(0.01, 32.0)),
       min_unit=st.integers(1, 16), max_unit=st.integers(1, 1000),
       requested=st.integers(1, 4000))
def test_fit_bounds_are_the_fit_rule_solved_for_requested(
        total: int, used: int, reserved: int, ratio: float, min_unit: int, max_unit: int,
        requested: int) -> None:
    # The resources filter keeps a host iff low <= requested <= high.
    low, high = fit_bounds(used, total, reserved, ratio, min_unit, max_unit)
    assert (low <= requested <= high) == fits(used, requested, total, reserved, ratio,
                                              min_unit, max_unit)
