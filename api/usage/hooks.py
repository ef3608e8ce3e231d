"""Billing follows the server lifecycle: the glue between servers, agents and the usage ledger.

Who records what (docs/billing.md, "Where entries come from"):

* ``created``: the servers service, once the server is placed (:func:`on_created`).
* ``running`` / ``stopped``: what the agent observed, at the agent's ``seen_at`` (already capped
  at the API's now). Registered in ``api.agent.service`` by :func:`install`, as a transition
  hook (status changes) and as an observation hook (a host back after ``host_down`` reports
  its server running again without any status change).
* ``deleted``: the agent's confirmation, ``force_delete`` and a delete of a never-placed server.
* ``resized``: :func:`on_resized`, called by the resize path.
* ``host_down``: ``api.usage.host_monitor``.

A server's billing state after an event is decided by :func:`billing_target`; an entry is only
written when it differs from the ledger's state at the event's time, so the heartbeat's
repeated "still running" reports add nothing. Keys are deterministic (server,
kind, time, generation): a retried report cannot record a second row.
"""

from __future__ import annotations

from datetime import datetime
from typing import Literal

from sqlalchemy.orm import Session

from api.agent import service as agent_service
from api.models import Server, UsageServer
from api.servers import states
from api.usage import ledger, repository
from api.usage.rules import epoch, state_after

Target = Literal["running", "stopped", "deleted"]


def billing_target(status: str, observed: str | None) -> Target | None:
    """The billing state a server should be in; None: leave it as it is.

    ``observed`` is the agent's report (running, shutoff, absent, error = crashed), None when
    only the status changed (``force_delete``, a transition hook). Rules, first match wins:

    1. DELETED bills nothing any more.
    2. BUILD has not run yet; ERROR is never billed (a crashed build is stopped).
    3. A guest seen running is running (ACTIVE, or a host back after ``host_down``).
    4. A REBOOT keeps the billing state: the guest is down inside the user's own reboot, so a
       reboot neither stops compute billing nor starts a new run (no new minimum per start).
    5. A guest seen shut off, gone or crashed stops compute billing at that moment, whatever
       the status says (a guest that powers itself off, a crash, the power-off of a delete).
    6. Without an observation, the status decides: ACTIVE runs, SHUTOFF is stopped.
    """
    if status == states.DELETED:
        return "deleted"
    if status == states.BUILD:
        return None
    if status == states.ERROR:
        return "stopped"
    if observed == "running":
        return "running"
    if status == states.REBOOT:
        return None
    if observed in ("shutoff", "absent", "error"):
        return "stopped"
    if status == states.ACTIVE:
        return "running"
    if status == states.SHUTOFF:
        return "stopped"
    return None


def ledger_state(session: Session, server_id: str, at: datetime | None = None) -> str:
    """The server's billing state in the ledger (building, running, stopped or deleted).

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


def follow(session: Session, server: Server, at: datetime, observed: str | None = None,
           source: ledger.Source = "agent") -> None:
    """Record the entry that brings the ledger to :func:`billing_target`, if any.

    ``at`` is when it happened (the agent's capped ``seen_at``, or the API's clock). Only
    flushes.
    """
    target = billing_target(server.status, observed)
    if target is None or target == ledger_state(session, server.id, at):
        return
    if target == "deleted":
        key, source = f"server:{server.id}:deleted", "api"
    else:
        key = f"server:{server.id}:{target}:{at.isoformat()}:g{server.generation}"
    _record(session, server, target, at, key, source)


def _record(session: Session, server: Server, kind: ledger.LedgerKind, at: datetime,
            key: str, source: ledger.Source) -> None:
    ledger.record(session, kind=kind, project_id=server.project_id, server_id=server.id,
                  vcpus=server.vcpus, ram_mb=server.ram_mb, disk_gb=server.disk_gb, at=at,
                  idempotency_key=key, source=source, flavor_id=server.flavor_id)


def on_created(session: Session, server: Server) -> None:
    """Record ``created`` (disk and server time start) at the server's creation time."""
    _record(session, server, "created", server.created_at, f"server:{server.id}:created", "api")


def on_deleted(session: Session, server: Server, at: datetime) -> None:
    """Record ``deleted`` (everything stops; a running server stops with it) once."""
    if ledger_state(session, server.id) != "deleted":
        _record(session, server, "deleted", at, f"server:{server.id}:deleted", "api")


def on_resized(session: Session, server: Server, at: datetime) -> None:
    """Record ``resized``: the server's (already updated) flavor and sizes bill from ``at``.

    For the resize action: call it in the same unit of work, after copying the new flavor's
    id, vcpus, ram_mb and disk_gb onto ``server`` and bumping its generation. Only flushes.
    """
    _record(session, server, "resized", at,
            f"server:{server.id}:resized:{at.isoformat()}:g{server.generation}", "api")


def on_transition(session: Session, server: Server, old_status: str, new_status: str,
                  seen_at: datetime) -> None:
    """Transition hook: bill the new status from the agent's time (or the API's)."""
    del old_status, new_status  # ``server`` already carries the new status
    follow(session, server, seen_at)


def on_observation(session: Session, server: Server, observed: str, seen_at: datetime) -> None:
    """Observation hook: bill what the agent saw, also when the status did not change."""
    follow(session, server, seen_at, observed)


def install() -> None:
    """Register the billing hooks with the agent service, once per process (idempotent)."""
    if on_transition not in agent_service.TRANSITION_HOOKS:
        agent_service.TRANSITION_HOOKS.append(on_transition)
    if on_observation not in agent_service.OBSERVATION_HOOKS:
        agent_service.OBSERVATION_HOOKS.append(on_observation)
