"""Who listens to the server lifecycle: the one place subscribers are registered.

``api.servers.lifecycle`` publishes every :class:`~api.servers.changes.Change` to each
subscriber in :data:`SUBSCRIBERS`, in order, inside the unit of work that made the change (a
subscriber only flushes; an exception rolls the change back with it). A subscriber's
``on_change`` returns True when it recorded something (the host monitor counts those).

A heartbeat whose observations only confirm the stored state is answered without the ORM or a
lock (``api.agent.service.confirmed``) only when every subscriber declares, through its
``records_nothing`` predicate, that such an observation would record nothing. A subscriber
without one may record something: every confirming heartbeat then takes the full path, where
it hears each observation.

To add one (notifications, metrics): write ``fn(session, change) -> bool`` in its own domain
and append ``Subscriber(fn)`` here (with ``records_nothing`` when it can tell from the
confirmation row alone). Subscribers never import the lifecycle, so there is no import cycle.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from datetime import datetime

from sqlalchemy.orm import Session

from api.servers.changes import Change
from api.usage import hooks as billing

OnChange = Callable[[Session, Change], bool]

# (status, observed, at, billing summary state, summary's last second) -> whether an
# observation that confirms the stored state would record nothing. The arguments are what the
# heartbeat's one read (``api.agent.repository.confirmation_rows``) knows of the server;
# the summary's two are None when the server has no billing summary yet.
RecordsNothing = Callable[[str, str, datetime, str | None, int | None], bool]


@dataclass(frozen=True)
class Subscriber:
    """A lifecycle subscriber: ``on_change`` hears every change; ``records_nothing`` (None:
    it may record something) tells whether a confirming observation would leave it idle."""

    on_change: OnChange
    records_nothing: RecordsNothing | None = None


SUBSCRIBERS: list[Subscriber] = [
    # The usage ledger: created, running/paused/stopped, resized, deleted, host_down.
    Subscriber(billing.on_change, billing.records_nothing),
]


def publish(session: Session, change: Change) -> int:
    """Hand ``change`` to every subscriber; returns how many recorded something."""
    return sum(1 for subscriber in SUBSCRIBERS if subscriber.on_change(session, change))


def confirmation_predicates() -> list[RecordsNothing] | None:
    """Every subscriber's ``records_nothing``, in order; None when one has none (it may
    record something, so a confirming observation must take the full path)."""
    predicates = [s.records_nothing for s in SUBSCRIBERS]
    return None if None in predicates else [p for p in predicates if p is not None]


def record_nothing(status: str, observed: str, at: datetime, summary_state: str | None,
                   summary_last_s: int | None) -> bool:
    """Whether every subscriber declares that an observation confirming the stored state
    records nothing (the arguments of :data:`RecordsNothing`); False when one has no
    predicate."""
    predicates = confirmation_predicates()
    return predicates is not None and all(
        p(status, observed, at, summary_state, summary_last_s) for p in predicates)
