"""The one owner of server transitions: user actions and agent observations alike.

Everything that changes a server's status, task or desired state goes through here:

* the state machine's rules (pure, in ``api.servers.states``) applied to a server row;
* one optimistic compare-and-swap on ``servers.generation`` (:func:`swap`): a user's action
  that lost a race is 409 ``state_changed``; an agent observation holds the host and server
  locks, so its swap cannot lose;
* one event history (:func:`record_event`);
* one way to finish a delete (:func:`finish_delete`), whoever confirms it;
* waking the host's agent (:func:`notify_host`) whenever its desired state changed;
* publishing each change to the subscribers of ``api.servers.subscribers`` (billing).

Callers (``api.servers.service`` for users, ``api.agent.service`` for agents,
``api.usage.host_monitor`` for silent hosts, ``api.servers.timeouts`` for stuck transitions)
decide *whether* a change may happen; this module makes it happen the same way every time.
Services only flush; the request commits.
"""

from __future__ import annotations

import contextlib
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy import update
from sqlalchemy.orm import Session

from api.agent import notifier
from api.agent import repository as agent_repository
from api.config import Settings
from api.db import new_id, utcnow
from api.errors import Conflict, request_id_var
from api.hosts import repository as hosts_repository
from api.mobility import repository as mobility_repository
from api.models import Host, Server, ServerEvent
from api.servers import repository, states
from api.servers.changes import Change
from api.servers.console import console_path
from api.servers.subscribers import publish

ACCEPTED, SUCCESS, ERROR = "accepted", "success", "error"
# The event of a server whose domain stopped on its host without being asked (the agent's
# report, see ``observe``); scaling groups replace a member that has one.
DOMAIN_STOPPED_UNEXPECTEDLY = "domain_stopped_unexpectedly"

_EVENT_CLOCK = "server_event_clock"


# ---------------------------------------------------------------- events and notification

def _event_time(session: Session, server: Server) -> datetime:
    """Now, or just after the server's last event if that is not earlier.

    Events are listed by (created_at, id) and ids are random: each server's timestamps are
    kept strictly increasing so "oldest first" is the order in which they were recorded. The
    unit of work remembers what it recorded (and that a server it created has no events yet),
    so only the first event of an existing server asks the database.
    """
    at = utcnow()
    clock: dict[str, datetime | None] = session.info.setdefault(_EVENT_CLOCK, {})
    last = clock[server.id] if server.id in clock else repository.last_event_at(
        session, server.id)
    if last is not None and at <= last:
        at = last + timedelta(microseconds=1)
    clock[server.id] = at
    return at


def record_event(session: Session, server: Server, action: str, *, user_id: str | None,
                 result: str, message: str = "",
                 details: dict[str, Any] | None = None, flush: bool = True) -> ServerEvent:
    """Append one event to the server's history, tagged with the current request id.

    ``result`` is ``accepted`` (a request that started a transition), ``success`` or ``error``
    (how a transition ended). Runs in the unit of work of the change it describes.
    ``flush=False`` leaves the insert to the next flush, so events recorded together go in
    one batched insert.
    """
    rid = request_id_var.get()
    event = ServerEvent(
        server_id=server.id, project_id=server.project_id, action=action, user_id=user_id,
        request_id=None if rid == "-" else rid, result=result, message=message,
        details=details or {}, created_at=_event_time(session, server),
    )
    session.add(event)
    if flush:
        session.flush()
    return event


@dataclass(frozen=True)
class NewEvent:
    """One event for :func:`record_events`: what :func:`record_event` takes."""

    action: str
    user_id: str | None
    result: str
    message: str = ""
    details: dict[str, Any] = field(default_factory=dict)


def record_events(session: Session, server: Server, *events: NewEvent) -> None:
    """Append several events to the server's history in one INSERT (no ORM objects), in
    order, each as :func:`record_event` would record it."""
    rid = request_id_var.get()
    repository.insert_events(session, [
        {"id": new_id(), "server_id": server.id, "project_id": server.project_id,
         "action": e.action, "user_id": e.user_id, "request_id": None if rid == "-" else rid,
         "result": e.result, "message": e.message, "details": e.details,
         "created_at": _event_time(session, server)}
        for e in events])


def notify_host(session: Session, host_id: str) -> None:
    """Wake the host's long-polling agent: call after changing any of its servers.

    The cursor moves in this unit of work; the waiting poll wakes after its commit.
    """
    agent_repository.bump_desired_generation(session, host_id)
    notifier.host_changed(session, host_id)


# ---------------------------------------------------------------- the compare-and-swap

def swap(session: Session, server: Server, **values: Any) -> None:
    """Write ``values`` and bump the generation, only if nobody changed the server since it
    was read (``UPDATE servers ... WHERE id = :id AND generation = :seen``).

    Raises Conflict ``state_changed`` (409) when the row moved on; the client retries against
    the new state. Pending changes of ``server`` are flushed first; ``server`` is re-read.
    """
    session.flush()
    seen = server.generation
    result = session.execute(
        update(Server).where(Server.id == server.id, Server.generation == seen)
        .values(generation=seen + 1, updated_at=utcnow(), **values)
        .execution_options(synchronize_session=False))
    if getattr(result, "rowcount", 0) != 1:
        raise Conflict("The server changed while this request ran; retry.",
                       code="state_changed")
    session.refresh(server)


def _changed(session: Session, server: Server, old_status: str, at: datetime,
             observed: str | None = None) -> None:
    """Wake the agent and publish the change (a transition when the status moved)."""
    if server.host_id is not None:
        notify_host(session, server.host_id)
    if server.status != old_status:
        publish(session, Change("transition", server, at, old_status, observed=observed))
    elif observed is not None:
        publish(session, Change("observed", server, at, old_status, observed=observed))


# ---------------------------------------------------------------- user-driven transitions

def placed(session: Session, server: Server, host_id: str, availability_zone: str, *,
           cursor_moved: bool = False) -> None:
    """A new server, inserted by this unit of work (``repository.insert_server``), got its
    host: SPAWNING there; its agent wakes; billing starts. ``cursor_moved``: the claim
    already moved the host's ``desired_generation`` (``placement.place(wake_host=True)``)."""
    session.info.setdefault(_EVENT_CLOCK, {})[server.id] = None  # new: no events yet
    # Nobody else can see the row before this unit of work commits, so no compare-and-swap
    # (and no re-read) is needed: one plain UPDATE with the same values a swap would write.
    server.host_id = host_id
    server.availability_zone = availability_zone
    server.task_state = states.SPAWNING
    server.generation = server.generation + 1
    server.updated_at = utcnow()
    repository.set_placed(session, server)
    if cursor_moved:
        notifier.host_changed(session, host_id)
    else:
        notify_host(session, host_id)
    publish(session, Change("created", server, server.created_at, server.status))


def apply_action(session: Session, server: Server, action: str, *, user_id: str,
                 reboot_type: str = "soft", details: dict[str, Any] | None = None) -> None:
    """Move a placed server as ``action`` asks (already checked against ``states.ALLOWED``),
    race-free, wake its agent and record the ``accepted`` event.

    Raises Conflict ``state_changed`` when a concurrent request or observation won.
    """
    move = states.on_action(server.status, action, reboot_type)
    _transition(session, server, move.status, move.task_state)
    record_event(session, server, action, user_id=user_id, result=ACCEPTED,
                 details=details or {})


def _transition(session: Session, server: Server, status: str, task_state: str | None,
                **values: Any) -> None:
    old = server.status
    if server.host_id is not None:
        agent_repository.lock_host(session, server.host_id)  # lock order: host, then server
    swap(session, server, status=status, task_state=task_state, **values)
    _changed(session, server, old, utcnow())


def resized(session: Session, server: Server, flavor_id: str, vcpus: int, ram_mb: int,
            disk_gb: int, *, user_id: str, details: dict[str, Any]) -> None:
    """Give a SHUTOFF server new sizes, pending the agent's ``resize`` operation.

    Raises Conflict ``state_changed``.
    """
    _transition(session, server, states.SHUTOFF, states.RESIZING, flavor_id=flavor_id,
                vcpus=vcpus, ram_mb=ram_mb, disk_gb=disk_gb)
    record_event(session, server, "resize", user_id=user_id, result=ACCEPTED, details=details)
    publish(session, Change("resized", server, utcnow(), server.status))


def delete(session: Session, settings: Settings | None, server: Server, *,
           user_id: str) -> None:
    """Start a delete: DELETING (its agent removes it), or DELETED at once with no host.

    Deleting a DELETING server changes nothing. Raises Conflict ``state_changed``.
    """
    if server.status == states.DELETING:
        return
    moving = server.status == states.MIGRATING
    if server.host_id is None:
        finish_delete(session, settings, server, utcnow(), user_id=user_id, action="delete",
                      message="deleted at once: no host held it")
        return
    _transition(session, server, states.DELETING, states.DELETING_TASK)
    record_event(session, server, "delete", user_id=user_id, result=ACCEPTED)
    if moving:
        # The destination drops what it built once it no longer sees the server listed.
        for host_id in mobility_repository.abort_open(session, server.id,
                                                      "The server was deleted."):
            notify_host(session, host_id)


def finish_delete(session: Session, settings: Settings | None, server: Server, at: datetime,
                  *, user_id: str | None, action: str, message: str,
                  result: str = SUCCESS, details: dict[str, Any] | None = None,
                  observed: str | None = None) -> None:
    """The one way a delete ends, whoever ends it (the agent's confirmation, a server no host
    holds, an admin's force delete): DELETED with ``deleted_at = at``, allocations freed
    (quota usage counts ``deleted_at IS NULL``), the console tail removed, the host told,
    subscribers (billing: ``deleted``) and one event.
    """
    old = server.status
    for host_id in mobility_repository.abort_open(session, server.id, "The server was deleted."):
        notify_host(session, host_id)
    freed = repository.delete_allocations(session, server.id)
    swap(session, server, status=states.DELETED, task_state=None, deleted_at=at)
    if settings is not None:
        with contextlib.suppress(FileNotFoundError):
            console_path(settings, server.id).unlink()
    _changed(session, server, old, at, observed)
    record_event(session, server, action, user_id=user_id, result=result, message=message,
                 details={"allocations_freed": freed, **(details or {})})


def force_delete(session: Session, server: Server, *, user_id: str | None = None,
                 settings: Settings | None = None) -> None:
    """Delete a server without its agent's confirmation (its host is down), as if confirmed.

    Should the host come back, its agent no longer finds the server listed and removes the
    leftovers. A DELETED server is left as it is.
    """
    if server.status == states.DELETED:
        return
    if server.host_id is not None:
        agent_repository.lock_host(session, server.host_id)
    finish_delete(session, settings, server, utcnow(), user_id=user_id,
                  action="force_delete", message="Deleted without the agent's confirmation.")


# ---------------------------------------------------------------- agent observations

@dataclass(frozen=True)
class Operation:
    """A one-shot operation the agent must perform once and report back by ``id``.

    The id carries the server's generation, so a newer request of the same kind (a hard reboot
    over a soft one) has a new id and a late report of the older one settles nothing.
    """

    id: str
    kind: states.OperationKind
    params: dict[str, Any] = field(default_factory=dict)


def pending_operation(server: Server, host_id: str | None = None) -> Operation | None:
    """The operation the server waits for (``states.pending_operation``), if any.

    ``host_id``: the host asking; another host than the server's own is a migration's
    destination.
    """
    role: states.Role = ("destination" if host_id is not None and host_id != server.host_id
                         else "source")
    kind = states.pending_operation(server.status, server.task_state, role)
    if kind is None:
        return None
    params: dict[str, Any] = {}
    if kind == "reboot":
        params["type"] = "hard" if server.task_state == states.REBOOTING_HARD else "soft"
    return Operation(f"{kind}-{server.generation}", kind, params)


def observe(session: Session, settings: Settings, host_id: str, server: Server,
            observed: states.Observed, at: datetime, *, operation_id: str | None = None,
            message: str | None = None, addresses: list[Any] | None = None,
            unexpected_stop: str | None = None) -> states.Transition | None:
    """Apply what the host's agent saw of a server it holds (host and server rows locked).

    ``at`` is the agent's ``seen_at``, already capped at the API's clock; ``operation_id`` the
    operation it reports performed. Returns the transition made (None: the status stayed).
    Every applied observation is published, so billing sees a guest running again after its
    host was down even when the status did not change.

    ``unexpected_stop`` (libvirt's reason): the domain of a server that should run stopped
    without being asked, and the agent is starting it again. The status stays; an ACTIVE
    server with no task in flight gets a ``domain_stopped_unexpectedly`` event (which a
    scaling group reads to replace its member); otherwise (a task started meanwhile) the
    report changes nothing, and the agent's next plain report tells the state.
    """
    if unexpected_stop is not None:
        if server.status == states.ACTIVE and server.task_state is None:
            record_event(session, server, DOMAIN_STOPPED_UNEXPECTEDLY, user_id=None,
                         result=ERROR,
                         message=f"The server's domain stopped without being asked (libvirt: "
                                 f"{unexpected_stop}); its host starts it again.",
                         details={"reason": unexpected_stop, "seen_at": at.isoformat(),
                                  "host_id": host_id})
        return None
    pending = pending_operation(server, host_id)
    done = pending is not None and operation_id == pending.id
    move = states.on_observed(server.status, server.task_state, observed, operation_done=done)
    if observed in ("running", "shutoff", "paused", "absent"):
        server.power_state = observed
    if addresses is not None:
        server.addresses = addresses
    old = server.status
    if move is None:
        # Nothing moved: the agent is not woken, but subscribers still hear what it saw.
        session.flush()
        publish(session, Change("observed", server, at, old, observed=observed))
        return None
    detail = message or f"{old} -> {move.status} (agent saw {observed})"
    event_details = {"state": observed, "seen_at": at.isoformat(), "host_id": host_id}
    if move.status == states.DELETED:
        finish_delete(session, settings, server, at, user_id=None, action="observe",
                      message=detail, details=event_details, observed=observed)
        return move
    values: dict[str, Any] = {}
    if move.status == states.ERROR:
        values["fault_code"] = "spawn_failed"
        values["fault_message"] = message or "The hypervisor could not start the server."
    swap(session, server, status=move.status, task_state=move.task_state, **values)
    _changed(session, server, old, at, observed)
    record_event(session, server, "observe", user_id=None,
                 result=ERROR if move.status == states.ERROR else SUCCESS,
                 message=detail, details=event_details)
    return move


# ---------------------------------------------------------------- silent hosts

def host_down(session: Session, host: Host) -> int:
    """Publish ``host_down`` for every live server of a host that missed its heartbeats, once
    per silence, and record a ``host_down`` event on each.

    ``at`` is the host's last heartbeat. The servers keep their status (a host may come back);
    subscribers decide what it means (billing: compute stops). A silence already published
    (by an earlier sweep, or another API process) publishes nothing; a new silence after the
    host came back is published again. Returns how many subscribers recorded something.
    """
    assert host.last_heartbeat_at is not None
    if not hosts_repository.claim_down_publication(session, host.id, host.last_heartbeat_at):
        return 0
    recorded = 0
    for server in repository.live_servers_on(session, host.id):
        # No host name or id: tenants read their servers' events.
        record_event(session, server, "host_down", user_id=None, result=ERROR,
                     message="The server's host stopped sending heartbeats; its state is "
                             "unknown until the host is back.",
                     details={"last_heartbeat_at": host.last_heartbeat_at.isoformat()})
        recorded += publish(session, Change(
            "host_down", server, host.last_heartbeat_at, server.status,
            reason=f"host {host.name} missed its heartbeats"))
    return recorded


def evacuated(session: Session, server: Server, source: Host, host_id: str,
              availability_zone: str, *, running: bool, user_id: str | None,
              message: str, details: dict[str, Any]) -> None:
    """Move a server of the down host ``source`` to ``host_id`` (already claimed there), to be
    rebuilt from its image: BUILD/``rebuilding`` (``running``) or SHUTOFF/``rebuilding``.

    Billing first hears ``host_down`` (compute stops at the source's last heartbeat, should
    the host monitor not have swept it yet); the move itself bills nothing until the new host's
    agent sees the guest. Both agents are woken (the source's long-poll learns its fence
    order). The caller holds the source host's lock. Raises Conflict ``state_changed``.
    """
    old = server.status
    publish(session, Change("host_down", server, source.last_heartbeat_at or utcnow(), old,
                            reason=f"host {source.name} is down; server evacuated"))
    swap(session, server, host_id=host_id, availability_zone=availability_zone,
         status=states.BUILD if running else states.SHUTOFF, task_state=states.REBUILDING,
         power_state=None, addresses=[], fault_code=None, fault_message=None)
    notify_host(session, source.id)
    _changed(session, server, old, utcnow())
    record_event(session, server, "evacuate", user_id=user_id, result=ACCEPTED,
                 message=message, details=details)


# ---------------------------------------------------------------- stuck transitions

def timed_out(session: Session, settings: Settings, server: Server, step: str,
              limit_seconds: int, *, host_up: bool) -> str:
    """End a transition that made no progress within its limit; returns what was done.

    * a BUILD ends in ERROR (fault ``build_timeout``) and frees its allocations: the server
      never ran, so the host's room goes back to the scheduler at once (the server still
      counts against the project's quota until the user deletes it);
    * a DELETING whose host is down (or that no host holds) is finished as a force delete
      would (``deleted``); with its host up it ends in ERROR (fault ``delete_timeout``) and
      keeps its allocations, because the domain and disk may still exist there: deleting it
      again retries, an admin's force delete frees them;
    * REBOOT, resizing, pausing and unpausing end in ERROR (fault ``<step>_timeout``).

    The caller holds the host and server locks and re-checked that the server is still stuck;
    the compare-and-swap makes a second sweeper's attempt a Conflict ``state_changed``.
    """
    message = (f"The {step} made no progress within {limit_seconds} s and timed out"
               + ("." if host_up else " (its host is down)."))
    if server.status == states.DELETING and not host_up:
        finish_delete(session, settings, server, utcnow(), user_id=None, action="timeout",
                      message=message + " Deleted without the agent's confirmation.")
        return "deleted"
    old = server.status
    swap(session, server, status=states.ERROR, task_state=None,
         fault_code=f"{step}_timeout", fault_message=message)
    freed = repository.delete_allocations(session, server.id) if old == states.BUILD else 0
    _changed(session, server, old, utcnow())
    record_event(session, server, "timeout", user_id=None, result=ERROR, message=message,
                 details={"step": step, "allocations_freed": freed})
    return "error"


# ---------------------------------------------------------------- migrations

def migration_step(session: Session, server: Server, task_state: str, *, action: str,
                   message: str, user_id: str | None = None, result: str = SUCCESS,
                   details: dict[str, Any] | None = None, notify: tuple[str, ...] = ()) -> None:
    """Move a server to (or along) MIGRATING/``task_state`` and wake ``notify`` hosts too
    (a migration's destination). The caller holds every host's lock, then the server's.

    Raises Conflict ``state_changed``.
    """
    old = server.status
    swap(session, server, status=states.MIGRATING, task_state=task_state)
    _changed(session, server, old, utcnow())
    for host_id in notify:
        notify_host(session, host_id)
    record_event(session, server, action, user_id=user_id, result=result, message=message,
                 details=details or {})


def migration_ended(session: Session, server: Server, *, host_id: str,
                    availability_zone: str | None, status: str, task_state: str | None,
                    action: str, result: str, message: str,
                    details: dict[str, Any] | None = None, fault: tuple[str, str] | None = None,
                    notify: tuple[str, ...] = ()) -> None:
    """End a move: the server is ``status``/``task_state`` on ``host_id`` (the destination
    when the move completed, the source when it was reverted, with ``fault`` = (code,
    message) saying why). Both hosts are woken: the one that no longer lists the server
    removes what it holds of it. The caller holds every host's lock, then the server's.

    Raises Conflict ``state_changed``.
    """
    old = server.status
    values: dict[str, Any] = {"host_id": host_id, "availability_zone": availability_zone}
    if fault is not None:
        values.update(fault_code=fault[0], fault_message=fault[1])
    else:
        values.update(fault_code=None, fault_message=None)
    swap(session, server, status=status, task_state=task_state, **values)
    _changed(session, server, old, utcnow())
    for other in notify:
        notify_host(session, other)
    record_event(session, server, action, user_id=None, result=result, message=message,
                 details=details or {})
