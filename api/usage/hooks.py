"""Billing, a subscriber of the server lifecycle (``api.servers.subscribers``).

:func:`on_change` turns each published ``Change`` into usage ledger entries (docs/billing.md,
"Where entries come from"):

* ``created``: the server is placed.
* ``running`` / ``paused`` / ``stopped``: what the agent observed, at the agent's ``seen_at``
  (already capped at the API's now), on a status change or not (a host back after
  ``host_down`` reports its server running again without any status change).
* ``deleted``: whoever finished the delete (agent confirmation, force delete, no host).
* ``resized``: the resize action.
* ``host_down``: the host monitor, through ``lifecycle.host_down``.

A user's action alone (stop, reboot, pause) bills nothing: billing follows what the agent sees.
A server's billing state after an event is decided by :func:`billing_target`; an entry is only
written when it differs from the ledger's state at the event's time, so the heartbeat's
repeated "still running" reports add nothing. Keys are deterministic (server,
kind, time, generation): a retried report cannot record a second row.

:func:`records_nothing` is billing's predicate for observations that only confirm the stored
state (``api.servers.subscribers``): whether :func:`follow` would record anything.
"""

from __future__ import annotations

import logging
from datetime import datetime
from typing import Literal

from sqlalchemy.orm import Session

from api.models import Server, UsageServer
from api.servers import states
from api.servers.changes import Change
from api.usage import ledger, repository
from api.usage.rules import epoch, from_epoch, state_after

log = logging.getLogger("minicloud.billing")

Target = Literal["running", "paused", "stopped", "deleted"]


def billing_target(status: str, observed: str | None) -> Target | None:
    """The billing state a server should be in; None: leave it as it is.

    ``observed`` is the agent's report (running, paused, shutoff, absent, error = crashed), None
    when only the status changed (a finished delete). Rules, first match wins:

    1. DELETED bills nothing any more.
    2. BUILD has not run yet; ERROR is never billed (a crashed build is stopped). A
       MIGRATING guest seen paused is in a live migration's switch-over: nothing changes.
    3. A guest seen running is running (ACTIVE, or a host back after ``host_down``); a guest
       seen paused is paused (RAM and disk billed, not vCPU).
    4. A REBOOT keeps the billing state: the guest is down inside the user's own reboot, so a
       reboot neither stops compute billing nor starts a new run (no new minimum per start).
    5. A guest seen shut off, gone or crashed stops compute billing at that moment, whatever
       the status says (a guest that powers itself off, a crash, the power-off of a delete).
    6. Without an observation, the status decides: ACTIVE runs, PAUSED is paused, SHUTOFF is
       stopped.
    """
    if status == states.DELETED:
        return "deleted"
    if status == states.BUILD:
        return None
    if status == states.ERROR:
        return "stopped"
    if status == states.MIGRATING and observed == "paused":
        return None  # a live migration's switch-over pauses the guest for a moment
    if observed in ("running", "paused"):
        return "running" if observed == "running" else "paused"
    if status == states.REBOOT:
        return None
    if observed in ("shutoff", "absent", "error"):
        return "stopped"
    if status == states.ACTIVE:
        return "running"
    if status == states.PAUSED:
        return "paused"
    if status == states.SHUTOFF:
        return "stopped"
    return None


def ledger_state(session: Session, server_id: str, at: datetime | None = None) -> str:
    """The server's billing state in the ledger (building, running, paused, stopped, deleted).

    ``at``: the state at that time, from the entries up to it; the summary row answers
    when ``at`` is not before the server's last entry (the usual case: reports arrive in
    order), so a heartbeat costs one primary-key read per server.
    """
    summary = session.get(UsageServer, server_id)
    if summary is None:
        return "building"
    if at is None or epoch(at) >= summary.last_s:
        return summary.state
    # A late report (e.g. a stop the agent saw before its host was marked down).
    cut = epoch(at)
    return state_after(e for e in repository.entries_of(session, server_id) if e.at_s <= cut)


def records_nothing(status: str, observed: str, at: datetime, summary_state: str | None,
                    summary_last_s: int | None) -> bool:
    """Whether :func:`follow` would record nothing for an observation at ``at``, decided from
    the server's summary row alone (``summary_state`` None: no summary). False when the
    summary cannot tell (a report older than the server's last entry): ask :func:`follow`.

    Billing's ``records_nothing`` predicate in ``api.servers.subscribers``: a heartbeat that
    only confirms the stored state is answered from one read when it holds."""
    target = billing_target(status, observed)
    if target is None:
        return True
    if summary_state is None:
        return False  # "building": any target records an entry
    return summary_last_s is not None and epoch(at) >= summary_last_s \
        and target == summary_state


def follow(session: Session, server: Server, at: datetime, observed: str | None = None,
           source: ledger.Source = "agent") -> bool:
    """Record the entry that brings the ledger to :func:`billing_target`, if any.

    ``at`` is when it happened (the agent's capped ``seen_at``, or the API's clock). Returns
    whether an entry was recorded. Only flushes.
    """
    target = billing_target(server.status, observed)
    if target is None or target == ledger_state(session, server.id, at):
        return False
    if target == "deleted":
        key, source = f"server:{server.id}:deleted", "api"
    else:
        key = f"server:{server.id}:{target}:{at.isoformat()}:g{server.generation}"
    return _record(session, server, target, at, key, source)


def _record(session: Session, server: Server, kind: ledger.LedgerKind, at: datetime,
            key: str, source: ledger.Source, reason: str | None = None,
            new_server: bool = False) -> bool:
    entry = ledger.record(
        session, kind=kind, project_id=server.project_id, server_id=server.id,
        vcpus=server.vcpus, ram_mb=server.ram_mb, disk_gb=server.disk_gb, at=at,
        idempotency_key=key, source=source, flavor_id=server.flavor_id, reason=reason,
        new_server=new_server)
    return entry is not None


def on_change(session: Session, change: Change) -> bool:
    """The lifecycle subscriber: record what ``change`` means for the ledger, if anything.

    ``created`` at the server's creation time; ``resized`` once the server holds the new sizes;
    ``host_down`` (:func:`host_down`); otherwise :func:`follow` what the agent observed, or a
    finished delete. Returns whether an entry was recorded. Only flushes.
    """
    server = change.server
    if change.kind == "created":
        # Published once, by the unit of work that inserted the server (``lifecycle.placed``).
        return _record(session, server, "created", change.at, f"server:{server.id}:created",
                       "api", new_server=True)
    if change.kind == "resized":
        return _record(session, server, "resized", change.at,
                       f"server:{server.id}:resized:{change.at.isoformat()}"
                       f":g{server.generation}", "api")
    if change.kind == "host_down":
        return host_down(session, server, change.at, change.reason)
    if change.observed is None and server.status != states.DELETED:
        return False  # a user's request: billing waits for what the agent sees
    return follow(session, server, change.at, change.observed)


def host_down(session: Session, server: Server, heartbeat: datetime,
              reason: str | None) -> bool:
    """Stop compute of a server the ledger bills as running or paused, its host being silent.

    The entry is at the last sign of life that saw it so: the host's last heartbeat, or
    the server's own last ledger entry when an agent report arrived after that heartbeat.
    Several API processes sweeping at once are safe: the idempotency key
    ``host_down:<server>:<time>`` lets one entry in.
    """
    summary = session.get(UsageServer, server.id)
    if summary is None or summary.state not in ("running", "paused"):
        return False
    at = max(heartbeat, from_epoch(summary.last_s))
    recorded = _record(session, server, "host_down", at,
                       f"host_down:{server.id}:{at.isoformat()}", "api", reason)
    if recorded:
        log.info("%s: compute of server %s stops at %s", reason, server.id, at.isoformat())
    return recorded
