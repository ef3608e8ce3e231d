"""A unit of work is all or nothing on both databases, also when its first write is inside a
savepoint (SQLite would otherwise start the transaction at the savepoint, and releasing it
would commit that write for good while the rest rolls back)."""

from __future__ import annotations

from datetime import timedelta

from sqlalchemy import select

from api.config import Settings
from api.db import make_engine, make_sessionmaker, utcnow
from api.models import Lease
from tests.factories import unique


def test_a_rolled_back_unit_of_work_whose_first_write_was_in_a_savepoint_leaves_nothing(
        settings: Settings) -> None:
    engine = make_engine(settings.effective_database_url)
    try:
        maker = make_sessionmaker(engine)
        first, second = unique("lease"), unique("lease")
        with maker() as session:
            with session.begin_nested():  # the unit of work's first write
                session.add(Lease(name=first, holder="a", expires_at=utcnow()))
            session.add(Lease(name=second, holder="b",
                              expires_at=utcnow() + timedelta(seconds=1)))
            session.flush()
            session.rollback()
        with maker() as session:
            left = session.scalars(select(Lease.name).where(
                Lease.name.in_([first, second]))).all()
        assert left == []
        # And committed, both writes stay.
        with maker() as session:
            with session.begin_nested():
                session.add(Lease(name=first, holder="a", expires_at=utcnow()))
            session.add(Lease(name=second, holder="b", expires_at=utcnow()))
            session.commit()
        with maker() as session:
            assert sorted(session.scalars(select(Lease.name).where(
                Lease.name.in_([first, second]))).all()) == sorted([first, second])
    finally:
        engine.dispose()
