"""A database lease: one holder at a time across API processes, taken with a compare-and-swap.

The lease is a row ``(name, holder, expires_at, term)``. Taking it is one statement::

    UPDATE leases SET holder = :me, expires_at = :now + ttl,
                      term = CASE WHEN holder = :me THEN term ELSE term + 1 END
     WHERE name = :name AND (holder = :me OR expires_at < :now)

so of two processes racing for an expired lease exactly one updates the row (the row lock on
PostgreSQL, the write lock on SQLite) and the other sees ``rowcount == 0``. A holder that dies
stops renewing, its lease expires after ``ttl`` and the next taker wins. Every write the holder
makes as leader first renews the lease *in the same transaction* (:func:`renew`): a holder
that lost the lease (paused past its expiry while another took over) fails that renewal and
its write rolls back, so two leaders never both commit. Expiry compares the processes' own
UTC clocks (the API processes of one cloud run on NTP-synchronised machines).
"""

from __future__ import annotations

import os
import socket
import uuid
from datetime import datetime, timedelta

from sqlalchemy import Table, bindparam, case, insert, update
from sqlalchemy.exc import IntegrityError
from sqlalchemy.orm import Session

from api.models import Lease

LEASES: Table = Lease.__table__  # type: ignore[assignment]
# Renewal runs before every unit of work of the leader: a Core statement built once, so a call
# costs neither the ORM's bulk-update machinery nor building and hashing the expression.
_RENEW = (update(LEASES)
          .where(LEASES.c.name == bindparam("lease"), LEASES.c.holder == bindparam("me"),
                 LEASES.c.expires_at >= bindparam("now"))
          .values(expires_at=bindparam("expires")))


def new_holder() -> str:
    """A holder name unique to this process: host, pid and a random tag."""
    return f"{socket.gethostname()}:{os.getpid()}:{uuid.uuid4().hex[:8]}"


def take(session: Session, name: str, holder: str, ttl_s: float, now: datetime) -> bool:
    """Take or renew the lease ``name`` for ``ttl_s`` seconds; True when ``holder`` has it.

    Creates the row on first use (a concurrent creator's insert makes this one lose). Only
    flushes.
    """
    result = session.execute(
        update(Lease)
        .where(Lease.name == name, (Lease.holder == holder) | (Lease.expires_at < now))
        .values(holder=holder, expires_at=now + timedelta(seconds=ttl_s),
                term=case((Lease.holder == holder, Lease.term), else_=Lease.term + 1))
        .execution_options(synchronize_session=False))
    if getattr(result, "rowcount", 0) == 1:
        return True
    if session.get(Lease, name) is not None:
        return False
    try:
        with session.begin_nested():
            session.execute(insert(Lease).values(
                name=name, holder=holder, expires_at=now + timedelta(seconds=ttl_s), term=1))
    except IntegrityError:
        return False
    return True


def renew(session: Session, name: str, holder: str, ttl_s: float, now: datetime) -> bool:
    """Extend the lease only if ``holder`` still has it unexpired; False means it was lost
    and the caller must roll back what it is about to write. Only flushes."""
    result = session.execute(_RENEW, {"lease": name, "me": holder, "now": now,
                                      "expires": now + timedelta(seconds=ttl_s)})
    return getattr(result, "rowcount", 0) == 1


def current(session: Session, name: str) -> Lease | None:
    """The lease row (holder, expiry, term), if it was ever taken."""
    return session.get(Lease, name)
