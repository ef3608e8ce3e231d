"""What the server lifecycle publishes to its subscribers (``api.servers.subscribers``).

A value module with no dependencies, so subscribers (billing) can name the type without
importing the lifecycle that publishes it.
"""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime
from typing import Literal

from api.models import Server

ChangeKind = Literal["created", "transition", "observed", "resized", "host_down"]


@dataclass(frozen=True)
class Change:
    """One lifecycle change of ``server``, published inside the unit of work that made it.

    ``kind``:

    * ``created``: the server is placed and exists for good (``at``: its creation time).
    * ``transition``: its status changed from ``old_status`` to ``server.status`` (a user's
      action, an agent's observation, a delete finishing).
    * ``observed``: the agent's observation was applied but the status stayed the same.
    * ``resized``: ``server`` already holds the new flavor's sizes.
    * ``host_down``: its host missed its heartbeats; ``at`` is the host's last heartbeat.

    ``observed`` is what the agent saw (None when the change did not come from the agent).
    ``at`` is when it happened: the agent's ``seen_at`` capped at the API's clock, or the API's
    clock. ``reason`` is a human-readable cause (``host_down``).
    """

    kind: ChangeKind
    server: Server
    at: datetime
    old_status: str
    observed: str | None = None
    reason: str | None = None
