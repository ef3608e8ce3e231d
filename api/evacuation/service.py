"""Evacuation of a down host, the fencing of that host when it comes back, and the optional
automatic evacuation.

Evacuating a host that is ``down`` (no heartbeat for ``host_down_after_seconds``) rebuilds each
of its servers on another host, from its image, keeping its id, name, flavor, user_data and key
(the local disk content is lost with the host). Each server is placed by the placement service
(``exclude_hosts=(<down host>,)``, every filter incl. anti-affinity, its allocations replaced
atomically: ``release_held``) in its own savepoint, so a server no host can take stays where it
is, with the scheduler's explained refusal, and evacuating again retries it. The lifecycle
(``lifecycle.evacuated``) makes the move: BUILD/``rebuilding`` for a server that was running
(or paused, or rebooting, or in ERROR), SHUTOFF/``rebuilding`` for one that was off.

Fencing: every server rebuilt elsewhere leaves a fence order for the down host (an
``evacuations`` row with ``fenced_at`` NULL). Until its agent has reported every order done,
the API refuses the host's heartbeats, inventory, observations and desired state with 409
``fencing_required`` (so the host stays down and unschedulable, and its agent learns nothing
it could start); the agent's first call after a start is ``GET /v1/agent/fencing``, and it
destroys and undefines those domains and deletes their files before anything else. Its
observations of evacuated servers could never change them anyway: they are no longer on its
host.
"""

from __future__ import annotations

import logging
import uuid
from datetime import datetime, timedelta

from sqlalchemy.orm import Session

from api.agent import repository as agent_repository
from api.config import Settings
from api.db import utcnow
from api.errors import Conflict, DomainError, NotFound, request_id_var
from api.evacuation import repository
from api.evacuation.progress import progress
from api.evacuation.repository import DELETED, REBUILDING, REFUSED
from api.evacuation.schemas import (
    EvacuatedServer,
    EvacuationOut,
    EvacuationProgress,
    FencedItem,
    problem_counts,
)
from api.hosts.service import get_host, is_up
from api.models import Evacuation, Flavor, Host, Image, Server, ServerGroup
from api.scheduler import placement
from api.servers import lifecycle, states
from api.servers import repository as servers_repository
from api.servers.lifecycle import ERROR, SUCCESS, record_event

log = logging.getLogger("minicloud.evacuation")

LOST_DISK = ("Evacuated from a down host: rebuilt on another host from its image with the "
             "same id, name, flavor, user data and key. The local disk content is lost.")

# The host aggregate tag that turns automatic evacuation on for one host (seconds after it
# went down); the zone-wide setting is ``auto_evacuate_after_seconds``.
AUTO_TAG = "auto_evacuate_after_seconds"


# ---------------------------------------------------------------- evacuate

def evacuate_host(session: Session, settings: Settings, host_id: str, *,
                  user_id: str | None, now: datetime | None = None) -> EvacuationOut:
    """Rebuild every live server of a down host elsewhere (one unit of work).

    ``user_id`` None is the automatic evacuation; ``now`` decides whether the host is down
    (default: the API clock). Raises NotFound ``host_not_found``, Conflict
    ``host_not_down`` when the host still heartbeats. A server no host can take is reported
    ``refused`` (and gets an ``evacuate`` error event), not raised.
    """
    host = get_host(session, host_id)
    # Serializes evacuations of this host and its agent's (refused) reports.
    agent_repository.lock_host(session, host.id)
    session.refresh(host)
    if is_up(host, settings, now):
        raise Conflict(f"Host {host.name} is up (it heartbeats): only a down host can be "
                       "evacuated.", code="host_not_down",
                       last_heartbeat_at=host.last_heartbeat_at.isoformat()
                       if host.last_heartbeat_at else None)
    batch = str(uuid.uuid4())
    out: list[EvacuatedServer] = []
    for server in servers_repository.live_servers_on(session, host.id):
        out.append(_evacuate_one(session, settings, host, server, batch, user_id))
    log.info("evacuation %s of host %s: %s", batch, host.name,
             ", ".join(f"{s.server_id} {s.result}" for s in out) or "no servers")
    return EvacuationOut(host_id=host.id, host=host.name, batch_id=batch, servers=out)


def _ends_running(server: Server) -> bool:
    """Whether the rebuilt server should run: what its user last asked for.

    A paused guest lost its memory with the host, so it boots afresh (ACTIVE); a server in
    ERROR gets a fresh start too.
    """
    if server.status == states.ERROR:
        return True
    return states.desired_power(server.status, server.task_state) in ("running", "paused")


def _evacuate_one(session: Session, settings: Settings, host: Host, server: Server,
                  batch: str, user_id: str | None) -> EvacuatedServer:
    if server.status == states.DELETING:
        # Its user wanted it gone: the delete finishes, as a force delete would.
        lifecycle.force_delete(session, server, user_id=user_id, settings=settings)
        repository.add(session, Evacuation(
            batch_id=batch, host_id=host.id, server_id=server.id, result=DELETED,
            message="It was being deleted: the delete finished.", requested_by=user_id))
        return EvacuatedServer(server_id=server.id, name=server.name, result="deleted",
                               status=server.status)
    savepoint = session.begin_nested()
    try:
        placed, running = _rebuild_elsewhere(session, settings, host, server, batch, user_id)
    except DomainError as exc:
        savepoint.rollback()
        session.refresh(server)
        return _refused(session, host, server, batch, user_id, exc)
    savepoint.commit()
    return EvacuatedServer(server_id=server.id, name=server.name, result="rebuilding",
                           status=states.BUILD if running else states.SHUTOFF,
                           target_host_id=placed.host_id, target_host=placed.host_name)


def _rebuild_elsewhere(session: Session, settings: Settings, host: Host, server: Server,
                       batch: str, user_id: str | None
                       ) -> tuple[placement.PlacementResult, bool]:
    """Claim another host for ``server`` and move it there; raises DomainError (NoValidHost,
    Conflict ``image_not_active`` / ``state_changed`` / ``placement_busy``)."""
    image = session.get(Image, server.image_id)
    if image is None or image.status != "active":
        status = image.status if image is not None else "deleted"
        raise Conflict(f"Its image {server.image_id} is {status}: it cannot be rebuilt.",
                       code="image_not_active", image_status=status)
    flavor = session.get(Flavor, server.flavor_id)
    group = (session.get(ServerGroup, server.server_group_id)
             if server.server_group_id is not None else None)
    spec = placement.request_spec(
        server_id=server.id, project_id=server.project_id, sizes=server, flavor=flavor,
        image=image, group=group, availability_zone=server.availability_zone,
        request_id=request_id_var.get())
    placed = placement.place(session, settings, spec, explain_hosts=True,
                             exclude_hosts=(host.id,), release_held=True)
    running = _ends_running(server)
    lifecycle.evacuated(
        session, server, host, placed.host_id, placed.availability_zone, running=running,
        user_id=user_id, message=LOST_DISK,
        details={"host_id": placed.host_id, "host": placed.host_name,
                 "batch_id": batch, "automatic": user_id is None,
                 "target_status": states.BUILD if running else states.SHUTOFF,
                 "local_disk": "lost"})
    record_event(session, server, "schedule", user_id=None, result=SUCCESS,
                 message=f"placed after {placed.attempts} attempt(s) (evacuation)",
                 details={"host_id": placed.host_id, "host": placed.host_name,
                          "availability_zone": placed.availability_zone,
                          "conflicts": placed.conflicts, "decision": placed.decision})
    repository.add(session, Evacuation(
        batch_id=batch, host_id=host.id, server_id=server.id, target_host_id=placed.host_id,
        result=REBUILDING, message=LOST_DISK, requested_by=user_id,
        details={"target_host": placed.host_name, "running": running}))
    return placed, running


def _refused(session: Session, host: Host, server: Server, batch: str, user_id: str | None,
             exc: DomainError) -> EvacuatedServer:
    detail = f"Evacuation refused: {exc.detail} The server stays on host {host.name}."
    by_filter = problem_counts(exc.extra, "refusals_by_filter")
    by_reason = problem_counts(exc.extra, "refusals")
    # The tenant sees the sentence (counts only), never the per-host list.
    record_event(session, server, "evacuate", user_id=user_id, result=ERROR,
                 message=f"Evacuation refused: {exc.detail}",
                 details={"code": exc.code, "refusals": by_reason or {},
                          "refusals_by_filter": by_filter or {}})
    repository.add(session, Evacuation(
        batch_id=batch, host_id=host.id, server_id=server.id, result=REFUSED,
        message=detail, requested_by=user_id,
        details={"code": exc.code, **{k: v for k, v in exc.extra.items()}}))
    return EvacuatedServer(server_id=server.id, name=server.name, result="refused",
                           status=server.status, code=exc.code, detail=detail,
                           refusals=by_reason, refusals_by_filter=by_filter)


# ---------------------------------------------------------------- progress

def host_progress(session: Session, host_id: str) -> EvacuationProgress:
    """The newest evacuation of a host; raises NotFound (``host_not_found``,
    ``evacuation_not_found`` when it was never evacuated)."""
    host = get_host(session, host_id)
    found = progress(session, [host.id]).get(host.id)
    if found is None:
        raise NotFound(f"Host {host.name} was never evacuated.", code="evacuation_not_found")
    return found


# ---------------------------------------------------------------- fencing

def require_fenced(session: Session, host_id: str) -> None:
    """Refuse an agent's report or desired-state read while its host has fence orders open.

    Raises Conflict ``fencing_required`` (409): the agent must first destroy and undefine the
    domains of its evacuated servers (``GET /v1/agent/fencing``).
    """
    if repository.fencing_pending(session, host_id):
        orders = repository.fence_orders(session, host_id)
        raise Conflict(
            f"{len(orders)} server(s) of this host were evacuated while it was down: destroy "
            "and undefine their domains and delete their files first (GET /v1/agent/fencing).",
            code="fencing_required", server_ids=sorted({o.server_id for o in orders}))


def fence_orders(session: Session, host_id: str) -> list[str]:
    """The server ids whose old copies the host's agent must remove, in id order."""
    return sorted({o.server_id for o in repository.fence_orders(session, host_id)})


def fenced(session: Session, host_id: str, items: list[FencedItem]) -> tuple[int, list[str]]:
    """Close the fence orders the agent reports done, with one ``fence`` event per server.

    Ids that are no open order of this host change nothing. Returns (orders closed, ids still
    open).
    """
    orders = {o.server_id for o in repository.fence_orders(session, host_id)}
    host = get_host(session, host_id)
    now = utcnow()
    done = [i for i in items if i.server_id in orders]
    closed = repository.mark_fenced(session, host_id, [i.server_id for i in done], now)
    for item in done:
        server = session.get(Server, item.server_id)
        if server is None:
            continue
        what = {"destroyed": "its running domain was destroyed and undefined",
                "undefined": "its domain (not running) was undefined",
                "absent": "no domain was defined there"}[item.domain]
        record_event(session, server, "fence", user_id=None, result=SUCCESS,
                     message=f"The host it was evacuated from came back and removed the old "
                             f"copy before anything else: {what}; never started.",
                     details={"host_id": host.id, "host": host.name,
                              "domain": item.domain, "files_removed": item.files_removed})
    log.info("host %s fenced %d evacuated server(s)", host.name, closed)
    return closed, fence_orders(session, host_id)


# ---------------------------------------------------------------- automatic evacuation

def auto_grace(host: Host, settings: Settings) -> int | None:
    """Seconds after which a down host is evacuated automatically; None: never (default).

    The host's aggregate tag ``auto_evacuate_after_seconds`` wins over the zone's entry in
    ``settings.auto_evacuate_after_seconds`` (``"*"``: every zone). A tag that is not a whole
    number of seconds is ignored (logged).
    """
    tag = (host.aggregates or {}).get(AUTO_TAG)
    if tag is not None:
        try:
            value = int(str(tag))
        except ValueError:
            log.warning("host %s: aggregate %s=%r is not a number of seconds; ignored",
                        host.name, AUTO_TAG, tag)
        else:
            return value if value > 0 else None
    zones = settings.auto_evacuate_after_seconds
    return zones.get(host.availability_zone, zones.get("*"))


def auto_sweep(session: Session, settings: Settings, hosts: list[Host],
               now: datetime | None = None) -> int:
    """Evacuate each down host whose grace has passed, once per down period (a server that
    could not be placed then waits for an admin's retry). Returns how many hosts. Only flushes.
    """
    now = now or utcnow()
    started = 0
    for host in hosts:
        grace = auto_grace(host, settings)
        if grace is None or host.last_heartbeat_at is None:
            continue
        down_at = host.last_heartbeat_at + timedelta(seconds=settings.host_down_after_seconds)
        if now < down_at + timedelta(seconds=grace) or is_up(host, settings, now):
            continue
        # Locked before the check: two API processes sweeping at once evacuate it once.
        agent_repository.lock_host(session, host.id)
        if repository.evacuated_since(session, host.id, host.last_heartbeat_at):
            continue
        if not servers_repository.live_servers_on(session, host.id):
            continue
        result = evacuate_host(session, settings, host.id, user_id=None, now=now)
        log.warning("host %s down for %d s beyond its grace: evacuated automatically (%s)",
                    host.name, grace, result.batch_id)
        started += 1
    return started
