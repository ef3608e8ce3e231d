"""The scaling reconciler: one leader across API processes keeps every group at its desired size.

Every API process runs :func:`run`; each pass first takes the database lease
(``api.scaling.lease``), so only its holder reconciles. A pass handles each group in small
units of work, each of which first renews the lease (a holder that lost it rolls back):

1. **Health and decision** (one unit of work per group): members whose server is gone,
   DELETING behind the group's back, in ERROR, SHUTOFF (its domain stopped), whose domain
   stopped without being asked (killed or crashed: the agent's report), stuck in BUILD
   past ``build_timeout_seconds`` or on a host that is down are released (the broken server
   deleted; a down host's server force-deleted) and an activity says why; then
   :func:`api.scaling.decision.decide` sets min/max/desired from the schedules and the target
   tracking policy, and surplus members are deleted by the scale-in policy (never a protected
   one).
2. **Launches** (one unit of work per member): a member is created through the servers
   service (quota, placement, billing and events as for any server) under the key
   ``(group, next_seq)``: the group's generation compare-and-swap and the unique
   ``(group_id, seq)`` make a launch that runs twice collide instead of creating a second
   server. A refused launch (``quota_exceeded``, ``no_valid_host`` with its refusals per
   filter) is recorded with the refusal and retried after an exponential backoff.

A leader killed mid-pass leaves only committed units behind; the next leader (after the lease
expires) re-reads the state and carries on.
"""

from __future__ import annotations

import asyncio
import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from dataclasses import dataclass, field
from datetime import datetime, timedelta
from typing import Any

from sqlalchemy.exc import TimeoutError as PoolTimeout
from sqlalchemy.orm import Session, sessionmaker

from api.config import Settings
from api.db import utcnow
from api.deps import Principal
from api.errors import Conflict, DomainError
from api.guest_metrics import service as guest_metrics
from api.hosts.service import is_up
from api.models import Host, ScalingGroup, ScalingMember, Server
from api.scaling import decision, lease, repository, service
from api.server_groups import service as server_groups
from api.servers import lifecycle, states
from api.servers import service as servers
from api.servers.schemas import ServerCreate

log = logging.getLogger("minicloud.scaling")

LEASE = "scaling-reconciler"

MetricSource = Callable[[Session, Settings, Sequence[str], str, int, datetime],
                        Mapping[str, float]]


def member_metrics(session: Session, settings: Settings, server_ids: Sequence[str], name: str,
                   window_s: int, now: datetime) -> Mapping[str, float]:
    """The average of metric ``name`` per member over the last ``window_s`` seconds (members
    without samples absent): the one place the reconciler reads guest metrics."""
    return guest_metrics.recent_average(session, server_ids, name, window_s, now,
                                        settings=settings)


class LeaseLost(Exception):
    """This process no longer holds the lease: stop reconciling, roll back."""


@dataclass
class PassResult:
    """What one pass did (for logs and tests)."""

    leader: bool
    groups: int = 0
    launched: list[str] = field(default_factory=list)
    failures: int = 0


@contextmanager
def _leading(factory: sessionmaker[Session], settings: Settings,
             holder: str) -> Iterator[Session]:
    """A unit of work that first renews the lease; raises LeaseLost (rolled back) without it."""
    with factory() as session, session.begin():
        if not lease.renew(session, LEASE, holder, settings.scaling_lease_seconds, utcnow()):
            raise LeaseLost(holder)
        yield session


def _principal(group: ScalingGroup) -> Principal:
    # Members are created as the group's creator would create them (a member, never admin).
    return Principal(group.user_id, f"scaling-group:{group.name}", group.project_id, "",
                     "member", "scaling_group", group.id)


def _state(group: ScalingGroup,
           live: Sequence[tuple[ScalingMember, Server]]) -> decision.GroupState:
    policy = decision.TargetTracking(**group.policy) if group.policy else None
    return decision.GroupState(
        min_size=group.min_size, max_size=group.max_size, desired=group.desired,
        members=[decision.Member(s.id, m.seq, m.created_at, m.protected) for m, s in live],
        policy=policy,
        schedules=[decision.ScheduledAction(**a) for a in group.scheduled_actions or []],
        recommendations=[(datetime.fromisoformat(t), int(v))
                         for t, v in group.recommendations or []],
        last_scale_out_at=group.last_scale_out_at,
        schedule_checked_at=group.schedule_checked_at)


def _unhealthy(server: Server, hosts: Mapping[str, Any], settings: Settings,
               now: datetime, stopped: Mapping[str, Any] | None) -> tuple[str, str] | None:
    """(reason, sentence) when the member must be replaced, else None.

    ``stopped``: the details of the server's latest ``domain_stopped_unexpectedly`` event.
    """
    if server.deleted_at is not None or server.status == states.DELETED:
        return "deleted", f"server {server.name} was deleted outside the group"
    if server.status == states.DELETING:
        return "deleted", f"server {server.name} is being deleted outside the group"
    if server.status == states.ERROR:
        fault = f" ({server.fault_code})" if server.fault_code else ""
        return "error", f"server {server.name} is in ERROR{fault}"
    if server.status == states.SHUTOFF and server.task_state is None:
        # Its domain stopped (killed on the host, or powered off): not serving.
        return "shutoff", f"server {server.name} is SHUTOFF (its domain stopped)"
    if stopped is not None and server.status != states.BUILD:
        # Its domain was killed or crashed on the host: the agent restarts it in place, but a
        # member is cattle, like an instance failing its status check: replaced.
        return "domain_stopped", (f"server {server.name}'s domain stopped without being "
                                  f"asked (libvirt: {stopped.get('reason', 'unknown')})")
    host = hosts.get(server.host_id) if server.host_id else None
    if host is not None and not is_up(host, settings, now):
        return "host_down", f"server {server.name}'s host {host.name} is down"
    if (server.status == states.BUILD
            and now - server.updated_at > timedelta(seconds=settings.build_timeout_seconds)):
        return "build_timeout", (f"server {server.name} stayed in BUILD longer than "
                                 f"{settings.build_timeout_seconds} s")
    return None


def _replace_unhealthy(session: Session, settings: Settings, group: ScalingGroup,
                       live: list[tuple[ScalingMember, Server, Host | None,
                                        dict[str, Any] | None]],
                       now: datetime) -> list[tuple[ScalingMember, Server]]:
    """Release unhealthy members (deleting what is left of them); return the healthy ones."""
    hosts = {host.id: host for _, _, host, _ in live if host is not None}
    healthy = []
    for member, server, _, stopped in live:
        verdict = _unhealthy(server, hosts, settings, now, stopped)
        if verdict is None:
            healthy.append((member, server))
            continue
        reason, sentence = verdict
        try:
            if reason == "host_down":
                # Its host cannot confirm a delete; should it return, its agent no longer
                # finds the server listed and removes the leftovers.
                lifecycle.force_delete(session, server, settings=settings)
            elif reason in ("error", "build_timeout", "shutoff", "domain_stopped"):
                lifecycle.delete(session, settings, server, user_id=group.user_id)
        except Conflict:
            healthy.append((member, server))  # it moved meanwhile: look again next pass
            continue
        member.released_at = now
        member.release_reason = reason
        session.flush()
        service.record_activity(
            session, group, kind="replace", result="success", rule=reason,
            cause=f"{sentence}: released from the group, a replacement follows",
            deleted=[server.id], details={"server": server.name, "seq": member.seq})
    return healthy


def _decide_and_scale_in(session: Session, settings: Settings, group: ScalingGroup,
                         metric_source: MetricSource, now: datetime) -> int:
    """Unit of work 1 of a group; returns how many members to launch (0: none)."""
    if not repository.bump(session, group):  # lock the group row first (lock order)
        return 0
    live = _replace_unhealthy(session, settings, group,
                              repository.live_members_with_hosts(
                                  session, group.id, lifecycle.DOMAIN_STOPPED_UNEXPECTEDLY),
                              now)
    state = _state(group, live)
    metrics: Mapping[str, float] = {}
    if state.policy is not None and live:
        metrics = metric_source(session, settings, [s.id for _, s in live],
                                state.policy.metric,
                                state.policy.window_s, now)
    verdict = decision.decide(state, metrics, now)
    before = (group.min_size, group.max_size, group.desired)
    repository.bump(
        session, group, min_size=verdict.min_size, max_size=verdict.max_size,
        desired=verdict.desired, last_scale_out_at=verdict.last_scale_out_at,
        schedule_checked_at=verdict.schedule_checked_at,
        recommendations=[[t.isoformat(), v] for t, v in verdict.recommendations])
    if before != (verdict.min_size, verdict.max_size, verdict.desired):
        kind = ("scale_out" if verdict.desired > before[2]
                else "scale_in" if verdict.desired < before[2] else "set")
        service.record_activity(
            session, group, kind=kind, result="success", rule=verdict.rule,
            cause="; ".join(verdict.reasons), from_desired=before[2],
            to_desired=verdict.desired,
            details={**verdict.details, "min_size": verdict.min_size,
                     "max_size": verdict.max_size})
    surplus = len(live) - group.desired
    if surplus > 0:
        members = [decision.Member(s.id, m.seq, m.created_at, m.protected) for m, s in live]
        order: decision.ScaleInPolicy = ("newest_first"
                                         if group.scale_in_policy == "newest_first"
                                         else "oldest_first")
        victims = {v.server_id for v in decision.scale_in_victims(members, surplus, order)}
        deleted = []
        for member, server in live:
            if server.id not in victims:
                continue
            try:
                lifecycle.delete(session, settings, server, user_id=group.user_id)
            except Conflict:
                continue
            member.released_at = now
            member.release_reason = "scale_in"
            deleted.append(server.id)
        kept = surplus - len(deleted)
        service.record_activity(
            session, group, kind="scale_in", result="success" if not kept else "partial",
            rule=group.scale_in_policy,
            cause=f"{len(live)} members > desired {group.desired}: deleted {len(deleted)} "
                  f"({group.scale_in_policy.replace('_', ' ')})"
                  + (f"; {kept} protected member(s) kept" if kept else ""),
            from_desired=group.desired, deleted=deleted)
        return 0
    missing = group.desired - len(live)
    if missing > 0 and group.retry_at is not None and now < group.retry_at:
        return 0  # backing off after a refused launch
    return max(missing, 0)


def _launch(factory: sessionmaker[Session], settings: Settings, holder: str,
            group_id: str) -> str | None:
    """Launch one member in its own unit of work; the new server's id, or None when the group
    no longer needs one. Raises DomainError when the servers service refuses (rolled back)."""
    with _leading(factory, settings, holder) as session:
        group = repository.get_group(session, group_id, None)
        if group is None or group.status != "active":
            return None
        live = repository.live_members(session, [group.id])[group.id]
        if len(live) >= group.desired or len(live) >= group.max_size:
            return None
        seq = group.next_seq
        # The launch key: a second runner of this launch saw the same generation and loses here
        # (and the unique (group_id, seq) would stop it even then).
        if not repository.bump(session, group, next_seq=seq + 1, failures=0, retry_at=None):
            return None
        body = ServerCreate(
            name=f"{group.name}-{seq}", flavor=group.flavor_id, image=group.image_id,
            user_data=group.user_data, key_data=group.key_data,
            server_group=group.server_group_id, availability_zone=group.availability_zone)
        server = servers.create_server(session, settings, _principal(group), body)
        session.add(ScalingMember(group_id=group.id, seq=seq, server_id=server.id,
                                  created_at=server.created_at))
        session.flush()
        service.record_activity(
            session, group, kind="launch", result="success", rule="desired",
            cause=f"launched {server.name}: member {len(live) + 1} of desired {group.desired}",
            created=[server.id], details={"seq": seq, "server": server.name})
        return server.id


def _refused(factory: sessionmaker[Session], settings: Settings, holder: str, group_id: str,
             error: DomainError, now: datetime) -> None:
    """Record a refused launch and back off: base x 2^(failures-1), capped."""
    with _leading(factory, settings, holder) as session:
        group = repository.get_group(session, group_id, None)
        if group is None:
            return
        failures = group.failures + 1
        delay = min(settings.scaling_retry_max_seconds,
                    settings.scaling_retry_base_seconds * 2 ** (failures - 1))
        retry_at = now + timedelta(seconds=delay)
        if not repository.bump(session, group, failures=failures, retry_at=retry_at):
            return
        live = len(repository.live_members(session, [group.id])[group.id])
        service.record_activity(
            session, group, kind="failure", result="error", rule=error.code,
            cause=f"launch refused with {live} of desired {group.desired} members: "
                  f"{error.detail} Retry in {delay:g} s.",
            error={"code": error.code, "detail": error.detail, **error.extra},
            details={"attempt": failures, "retry_at": retry_at.isoformat(),
                     "members": live})
        # Refusals repeat while room is short: keep the log bounded.
        repository.trim_activities(session, group.id, settings.scaling_activities_kept)


def _finish_delete(session: Session, group: ScalingGroup) -> None:
    """Remove a deleted group once none of its servers exists any more."""
    if repository.servers_not_deleted(session, group.id):
        return
    if group.server_group_id is not None:
        server_group_id = group.server_group_id
        group.server_group_id = None
        session.flush()
        with contextlib.suppress(DomainError):  # a user's own server joined it: keep it
            server_groups.delete_group(session, _principal(group), server_group_id)
    repository.delete_group(session, group)


def reconcile_group(factory: sessionmaker[Session], settings: Settings, holder: str,
                    group_id: str, result: PassResult,
                    metric_source: MetricSource = member_metrics) -> None:
    """Bring one group to its desired size (see the module docstring); raises LeaseLost."""
    now = utcnow()
    with _leading(factory, settings, holder) as session:
        group = repository.get_group(session, group_id, None)
        if group is None:
            return
        if group.status == service.DELETING:
            _finish_delete(session, group)
            return
        missing = _decide_and_scale_in(session, settings, group, metric_source, now)
    for _ in range(min(missing, settings.scaling_launches_per_pass)):
        try:
            server_id = _launch(factory, settings, holder, group_id)
        except LeaseLost:
            raise
        except DomainError as error:
            log.info("scaling group %s: launch refused: %s", group_id, error.detail)
            _refused(factory, settings, holder, group_id, error, utcnow())
            result.failures += 1
            return
        if server_id is None:
            return
        result.launched.append(server_id)


def run_pass(factory: sessionmaker[Session], settings: Settings, holder: str,
             metric_source: MetricSource = member_metrics) -> PassResult:
    """Take (or renew) the lease; as its holder, reconcile every group. A group that fails is
    logged and retried next pass; losing the lease ends the pass."""
    with factory() as session, session.begin():
        leader = lease.take(session, LEASE, holder, settings.scaling_lease_seconds, utcnow())
        ids = repository.group_ids(session) if leader else []
    result = PassResult(leader=leader)
    for group_id in ids:
        try:
            reconcile_group(factory, settings, holder, group_id, result, metric_source)
        except LeaseLost:
            log.warning("scaling: lease lost mid-pass (holder %s)", holder)
            break
        except PoolTimeout:  # overload, not a fault: the next pass retries
            log.warning("scaling group %s: no database connection free; retried next pass",
                        group_id)
        except Exception:  # one group's failure must not starve the others
            log.exception("scaling group %s: reconcile failed", group_id)
        result.groups += 1
    return result


async def run(factory: sessionmaker[Session], settings: Settings, holder: str,
              stop: asyncio.Event) -> None:
    """Run a pass every ``scaling_interval_seconds`` until ``stop`` is set (passes run in a
    worker thread; a failed pass is logged and the next one retries)."""
    while not stop.is_set():
        # Wait first: a process that starts (or a test app) makes no database work at once.
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), timeout=settings.scaling_interval_seconds)
        if stop.is_set():
            break
        try:
            await asyncio.to_thread(run_pass, factory, settings, holder)
        except PoolTimeout:  # overload, not a fault: the next pass retries
            log.warning("scaling pass skipped: no database connection free")
        except Exception:  # a database hiccup must not end the reconciler
            log.exception("scaling pass failed")
