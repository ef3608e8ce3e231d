"""Who listens to the server lifecycle: the one place subscribers are registered.

``api.servers.lifecycle`` publishes every :class:`~api.servers.changes.Change` to each
function in :data:`SUBSCRIBERS`, in order, inside the unit of work that made the change (a
subscriber only flushes; an exception rolls the change back with it). A subscriber returns
True when it recorded something (the host monitor counts those).

To add one (notifications, metrics): write ``fn(session, change) -> bool`` in its own domain
and append it here. Subscribers never import the lifecycle, so there is no import cycle.
"""

from __future__ import annotations

from collections.abc import Callable

from sqlalchemy.orm import Session

from api.servers.changes import Change
from api.usage import hooks as billing

Subscriber = Callable[[Session, Change], bool]

SUBSCRIBERS: list[Subscriber] = [
    billing.on_change,  # the usage ledger: created, running/paused/stopped, resized, deleted
]


def publish(session: Session, change: Change) -> int:
    """Hand ``change`` to every subscriber; returns how many recorded something."""
    return sum(1 for subscriber in SUBSCRIBERS if subscriber(session, change))
