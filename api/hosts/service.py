"""Host rules: enrollment tokens, capacity views, admin changes, availability zones."""

from __future__ import annotations

import math
from datetime import datetime, timedelta
from typing import Literal

from sqlalchemy.orm import Session

from api.agent import notifier
from api.config import Settings
from api.db import utcnow
from api.deps import Principal
from api.errors import Conflict, InvalidInput, NotFound
from api.evacuation.progress import progress as evacuation_progress
from api.hosts import repository
from api.hosts.schemas import (
    AvailabilityZoneOut,
    ForeignDomain,
    HostOut,
    HostPatch,
    LoopProgress,
    ResourceOut,
)
from api.models import EnrollmentToken, Host, Inventory
from api.pagination import Page, invalid_marker, page_of
from api.security import ENROLLMENT_PREFIX, HOST_CREDENTIAL_PREFIX, digest, new_secret
from scheduler import resources
from scheduler.capacity import capacity as fit_capacity


def create_enrollment_token(session: Session, settings: Settings,
                            principal: Principal) -> tuple[str, datetime]:
    """A new single-use enrollment token and its expiry; only its digest is stored."""
    secret = new_secret(ENROLLMENT_PREFIX)
    expires_at = utcnow() + timedelta(seconds=settings.enrollment_token_ttl_seconds)
    session.add(EnrollmentToken(digest=digest(secret), created_by=principal.user_id,
                                expires_at=expires_at))
    session.flush()
    return secret, expires_at


def is_up(host: Host, settings: Settings, now: datetime | None = None) -> bool:
    """True when the host sent a heartbeat within ``host_down_after_seconds``."""
    if host.last_heartbeat_at is None:
        return False
    now = now or utcnow()
    return now - host.last_heartbeat_at <= timedelta(seconds=settings.host_down_after_seconds)


HostStateName = Literal["up", "down", "degraded"]


def host_state(host: Host, settings: Settings, now: datetime | None = None) -> HostStateName:
    """``down`` without a heartbeat within ``host_down_after_seconds``; ``degraded`` when the
    heartbeats arrive but the agent's reconcile loop completed no pass within
    ``host_degraded_after_seconds`` (it reported progress before); else ``up``."""
    now = now or utcnow()
    if not is_up(host, settings, now):
        return "down"
    if host.loop_progress_at is not None and now - host.loop_progress_at > timedelta(
            seconds=settings.host_degraded_after_seconds):
        return "degraded"
    return "up"


def progress_moved(host: Host, progress: LoopProgress) -> bool:
    """Whether ``progress`` moves the host's pass count (or is its first report; a restarted
    agent counts from 0 again, which is a move too)."""
    previous = host.loop_progress or {}
    return host.loop_progress_at is None or previous.get("passes") != progress.passes


def record_progress(host: Host, progress: LoopProgress, now: datetime) -> None:
    """Keep the agent's loop progress, and when its pass count last moved."""
    if progress_moved(host, progress):
        host.loop_progress_at = now
    host.loop_progress = progress.model_dump(mode="json")


def effective_ratio(inv: Inventory, settings: Settings) -> float:
    """The inventory's own allocation ratio, else the pool-wide one from settings."""
    if inv.allocation_ratio is not None:
        return inv.allocation_ratio
    return resources.pool_ratios(settings).get(inv.resource_class,
                                               resources.default_ratio(inv.resource_class))


def capacity(inv: Inventory, settings: Settings) -> int:
    """floor((total - reserved) * allocation_ratio), the rule the scheduler's claim uses."""
    return max(0, math.floor(fit_capacity(inv.total, inv.reserved,
                                          effective_ratio(inv, settings))))


def list_host_views(session: Session, settings: Settings, *, limit: int,
                    marker: str | None) -> Page[HostOut]:
    """A page of every host as the admin sees it, by name; raises DomainError
    ``invalid_marker`` for a marker that is no host."""
    after = None
    if marker is not None:
        mark = session.get(Host, marker)
        if mark is None:
            raise invalid_marker()
        after = (mark.name, mark.id)
    page = page_of(repository.list_hosts(session, after=after, limit=limit + 1), limit,
                   lambda h: h.id)
    return Page(host_views(session, settings, list(page.items)), page.next_marker)


def host_views(session: Session, settings: Settings, hosts: list[Host]) -> list[HostOut]:
    """Admin views of ``hosts`` with capacity, allocated amounts, server counts and state."""
    ids = [h.id for h in hosts]
    invs = repository.inventories(session, ids)
    used = repository.allocated(session, ids)
    counts = repository.server_counts(session, ids)
    evacuations = evacuation_progress(session, ids)
    now = utcnow()
    out = []
    for h in hosts:
        resources = {
            rc: ResourceOut(
                total=inv.total, reserved=inv.reserved,
                allocation_ratio=effective_ratio(inv, settings),
                capacity=capacity(inv, settings), allocated=used.get((h.id, rc), 0),
                min_unit=inv.min_unit, max_unit=inv.max_unit,
            )
            for rc, inv in sorted(invs[h.id].items())
        }
        out.append(HostOut(
            id=h.id, name=h.name, availability_zone=h.availability_zone,
            libvirt_uri=h.libvirt_uri, virt_type=h.virt_type, architecture=h.architecture,
            enabled=h.enabled, disabled_reason=h.disabled_reason,
            state=host_state(h, settings, now),
            last_heartbeat_at=h.last_heartbeat_at,
            aggregates={str(k): str(v) for k, v in h.aggregates.items()},
            resources=resources, servers=counts.get(h.id, 0), created_at=h.created_at,
            foreign_domains=[ForeignDomain.model_validate(f) for f in h.foreign_domains or []],
            maintenance=h.maintenance,
            evacuation=evacuations.get(h.id),
            loop_progress=(LoopProgress.model_validate(h.loop_progress)
                           if h.loop_progress else None),
            loop_progress_at=h.loop_progress_at,
            migration_endpoint=h.migration_endpoint,
        ))
    return out


def get_host(session: Session, host_id: str) -> Host:
    """A host by id; raises NotFound."""
    host = session.get(Host, host_id)
    if host is None:
        raise NotFound("No such host.", code="host_not_found")
    return host


def update_host(session: Session, host_id: str, patch: HostPatch) -> Host:
    """Apply an admin's changes; raises NotFound, Conflict (no inventory yet), InvalidInput.

    Any change bumps the host generation: a claim racing with it conflicts and re-checks,
    and every API process's scheduler snapshot cache re-reads the host on its next placement
    (enabled, zone, aggregates, ratios and reserved are all things the filters look at).
    """
    host = get_host(session, host_id)
    if patch.enabled is not None:
        host.enabled = patch.enabled
        if patch.enabled:
            host.disabled_reason = None
    if patch.disabled_reason is not None:
        host.disabled_reason = patch.disabled_reason or None
    if patch.availability_zone is not None:
        host.availability_zone = patch.availability_zone
    if patch.aggregates is not None:
        host.aggregates = dict(patch.aggregates)
    if patch.allocation_ratios or patch.reserved:
        invs = repository.inventories(session, [host.id])[host.id]
        wanted = set(patch.allocation_ratios or {}) | set(patch.reserved or {})
        missing = sorted(wanted - set(invs))
        if missing:
            raise Conflict(f"The agent has not reported {', '.join(missing)} yet.",
                           code="inventory_missing", resource_classes=missing)
        for rc, ratio in (patch.allocation_ratios or {}).items():
            invs[rc].allocation_ratio = ratio
        for rc, reserved in (patch.reserved or {}).items():
            if reserved > invs[rc].total:
                raise InvalidInput(f"reserved {rc} exceeds its total {invs[rc].total}.",
                                   code="invalid_reserved")
            invs[rc].reserved = reserved
    session.flush()
    if patch.model_fields_set:
        repository.bump_generation(session, host.id)
    session.refresh(host)
    return host


def delete_host(session: Session, host_id: str) -> None:
    """Remove a host that holds no servers; raises NotFound, Conflict ``host_not_empty``."""
    host = get_host(session, host_id)
    servers = repository.server_counts(session, [host.id]).get(host.id, 0)
    if servers:
        raise Conflict(f"The host still has {servers} server(s); move or delete them first.",
                       code="host_not_empty", servers=servers)
    repository.detach_deleted_servers(session, host.id)
    session.delete(host)
    session.flush()
    notifier.host_changed(session, host.id)  # its waiting long-poll wakes and is refused


def rotate_credential(session: Session, host_id: str,
                      secret: str | None = None) -> tuple[Host, str]:
    """Give the host a new credential (``secret``, or a fresh one); the old one is refused
    from this commit on.

    Raises NotFound. A fresh secret is only known here: the caller shows it once.
    """
    host = get_host(session, host_id)
    secret = secret or new_secret(HOST_CREDENTIAL_PREFIX)
    host.credential_digest = digest(secret)
    _wake_agent(session, host)
    session.flush()
    return host, secret


def revoke_credential(session: Session, host_id: str) -> None:
    """Take the host's credential away (its agent gets 401); raises NotFound.

    The host keeps its servers and stays in the scheduler's view as it was; an admin gives
    it a new credential with ``rotate_credential``.
    """
    host = get_host(session, host_id)
    host.credential_digest = None
    _wake_agent(session, host)
    session.flush()


def _wake_agent(session: Session, host: Host) -> None:
    # A changed credential changes the host's desired-state cursor, so a long-poll waiting
    # with the old credential wakes at commit and is refused when it reads the answer.
    host.desired_generation = Host.desired_generation + 1
    notifier.host_changed(session, host.id)


def availability_zones(session: Session, settings: Settings,
                       principal: Principal) -> list[AvailabilityZoneOut]:
    """Every zone that has a host; ``available`` when an enabled host in it is up."""
    zones: dict[str, AvailabilityZoneOut] = {}
    now = utcnow()
    for h in repository.list_hosts(session):
        zone = zones.setdefault(h.availability_zone, AvailabilityZoneOut(
            name=h.availability_zone, available=False,
            hosts=[] if principal.is_admin else None))
        zone.available = zone.available or (h.enabled and host_state(h, settings, now) == "up")
        if zone.hosts is not None:
            zone.hosts.append(h.name)
    return [zones[name] for name in sorted(zones)]
