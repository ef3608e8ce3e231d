"""The server state machine, as pure functions shared by the lifecycle and the agent adapter.

Statuses (what a tenant sees)::

    BUILD --(agent sees it running)--> ACTIVE <--stop/start--> SHUTOFF
      |                                  |  ^  \\
      |                                  |  |   reboot (soft|hard) -> REBOOT --(done)--> ACTIVE
      |                                pause unpause
      |                                  v  |
      |                                 PAUSED --stop--> SHUTOFF
      +--(spawn fails)--> ERROR (fault code + message)
    any status except DELETING --delete--> DELETING --(agent confirms gone)--> DELETED (hidden)
    ACTIVE|SHUTOFF --migrate--> MIGRATING/migrating-export --(source sent the disk)-->
      MIGRATING/migrating-import --(destination defined it)--> SHUTOFF on the destination
      (then powering-on -> ACTIVE if it was ACTIVE); a failure returns it to the source
    ACTIVE --migrate live--> MIGRATING/live-preparing --(destination made its files)-->
      MIGRATING/live-migrating --(source copied memory and disk)--> ACTIVE on the destination;
      a failure, timeout or abort leaves it ACTIVE on the source (the guest never stops)
    host down, evacuated: BUILD/rebuilding --(runs on the new host)--> ACTIVE, or
                          SHUTOFF/rebuilding --(defined there, off)--> SHUTOFF

``task_state`` names the transition in flight (None when settled). A server with no host (not
yet placed) is deleted at once, since no agent holds anything for it.

Two kinds of action reach the agent. A *power* action (start, stop, pause, unpause) changes the
desired power state (:func:`desired_power`); the agent converges on it and the server settles
when the agent observes that state. A *one-shot* action (reboot, resize) cannot be read off a
power state, so it is a pending operation (:func:`pending_operation`): the agent performs it
once and reports its id back; only then does the server settle.

A migration (``api.mobility``) is MIGRATING with one task per step. The server's ``host_id``
stays the source until the destination holds it; the agent of the destination sees the
server in its desired state during ``migrating-import`` only, and the operation each host must
perform depends on its role (:func:`pending_operation`'s ``role``).
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

BUILD, ACTIVE, SHUTOFF, REBOOT, PAUSED, DELETING, ERROR, DELETED = (
    "BUILD", "ACTIVE", "SHUTOFF", "REBOOT", "PAUSED", "DELETING", "ERROR", "DELETED",
)
MIGRATING = "MIGRATING"
STATUSES = (BUILD, ACTIVE, SHUTOFF, REBOOT, PAUSED, DELETING, ERROR, MIGRATING)

# task_state values
SCHEDULING, SPAWNING, POWERING_OFF, POWERING_ON = (
    "scheduling", "spawning", "powering-off", "powering-on",
)
REBOOTING, REBOOTING_HARD, DELETING_TASK, RESIZING = (
    "rebooting", "rebooting-hard", "deleting", "resizing",
)
PAUSING, UNPAUSING = "pausing", "unpausing"
# A cold migration: the source stops the guest and sends its disk and seed (export), then the
# destination defines the server from them (import).
MIGRATING_EXPORT, MIGRATING_IMPORT = "migrating-export", "migrating-import"
MIGRATION_TASKS = frozenset({MIGRATING_EXPORT, MIGRATING_IMPORT})
# A live migration: the destination prepares empty files for the incoming guest, then the
# source's libvirtd copies memory and disk to it while the guest runs.
LIVE_PREPARING, LIVE_MIGRATING = "live-preparing", "live-migrating"
LIVE_TASKS = frozenset({LIVE_PREPARING, LIVE_MIGRATING})
# Evacuated from a down host: rebuilt from its image on another host (BUILD until it runs, or
# SHUTOFF until its domain is defined there shut off).
REBUILDING = "rebuilding"

Action = Literal["start", "stop", "reboot", "resize", "pause", "unpause", "migrate"]
Observed = Literal["running", "shutoff", "paused", "absent", "error"]
Desired = Literal["running", "shutoff", "paused", "absent"]
OperationKind = Literal["reboot", "resize", "migrate_export", "migrate_import",
                        "live_prepare", "live_migrate"]
Role = Literal["source", "destination"]

# Which actions each settled status accepts; anything else is 409 ``invalid_state``.
# A paused guest cannot answer the power button, so ``stop`` from PAUSED powers it off at once
# (the agent destroys the paused domain); ``reboot`` needs ``unpause`` first, as in Nova.
ALLOWED: dict[str, frozenset[str]] = {
    BUILD: frozenset(),
    ACTIVE: frozenset({"stop", "reboot", "pause", "migrate"}),
    SHUTOFF: frozenset({"start", "resize", "migrate"}),
    REBOOT: frozenset({"reboot"}),  # a hard reboot may override a stuck soft one
    PAUSED: frozenset({"unpause", "stop"}),
    DELETING: frozenset(),
    ERROR: frozenset(),
    MIGRATING: frozenset(),
}


@dataclass(frozen=True)
class Transition:
    """The status and task a server moves to."""

    status: str
    task_state: str | None


def action_allowed(status: str, task_state: str | None, action: str) -> bool:
    """True when ``action`` may start now (a transition in flight blocks others)."""
    if action not in ALLOWED.get(status, frozenset()):
        return False
    if status == REBOOT:
        return task_state == REBOOTING  # only soft -> hard escalation
    return task_state is None


def on_action(status: str, action: str, reboot_type: str = "soft") -> Transition:
    """Where an accepted action takes the server."""
    if action == "stop":
        return Transition(status, POWERING_OFF)  # ACTIVE or PAUSED until the agent sees it off
    if action == "start":
        return Transition(SHUTOFF, POWERING_ON)
    if action == "reboot":
        return Transition(REBOOT, REBOOTING_HARD if reboot_type == "hard" else REBOOTING)
    if action == "resize":
        return Transition(SHUTOFF, RESIZING)
    if action == "pause":
        return Transition(ACTIVE, PAUSING)
    if action == "unpause":
        return Transition(PAUSED, UNPAUSING)
    if action == "migrate":
        return Transition(MIGRATING, MIGRATING_EXPORT)
    raise ValueError(action)


def desired_power(status: str, task_state: str | None) -> Desired:
    """What the agent should make libvirt look like for a server in this state."""
    if status in (DELETING, DELETED):
        return "absent"
    if status == ERROR:
        # Keep a failed build's leftovers off: a user deletes an ERROR server to clean up.
        return "shutoff"
    if task_state == POWERING_OFF or task_state in MIGRATION_TASKS:
        return "shutoff"  # a cold migration moves a shut-off guest
    if task_state in LIVE_TASKS:
        return "running"  # a live migration moves a running guest (the agents leave it be)
    if status == ACTIVE:
        return "paused" if task_state == PAUSING else "running"
    if status == PAUSED:
        return "running" if task_state == UNPAUSING else "paused"
    if status == SHUTOFF:
        return "running" if task_state == POWERING_ON else "shutoff"
    return "running"  # BUILD, REBOOT


def pending_operation(status: str, task_state: str | None,
                      role: Role = "source") -> OperationKind | None:
    """The one-shot operation a server in this state waits for the agent to perform.

    ``role``: the host asking is the server's own (``source``) or a migration's
    ``destination``; a destination performs only ``migrate_import``.
    """
    if status == MIGRATING:
        if task_state == MIGRATING_EXPORT and role == "source":
            return "migrate_export"
        if task_state == MIGRATING_IMPORT and role == "destination":
            return "migrate_import"
        if task_state == LIVE_PREPARING and role == "destination":
            return "live_prepare"
        if task_state == LIVE_MIGRATING and role == "source":
            return "live_migrate"
        return None
    if role == "destination":
        return None
    if status == REBOOT:
        return "reboot"
    if status == SHUTOFF and task_state == RESIZING:
        return "resize"
    return None


def on_observed(status: str, task_state: str | None, observed: Observed,
                operation_done: bool = False) -> Transition | None:
    """Where an agent's observation takes the server; None when it changes nothing.

    ``operation_done`` says the agent reported the pending operation (see
    :func:`pending_operation`) performed: only then does REBOOT settle, and only then does
    SHUTOFF/``resizing`` settle (the domain redefined with the new sizes, overlay grown).

    A guest that powers itself off (``ACTIVE`` observed ``shutoff`` with no task) becomes
    SHUTOFF, and a guest paused or resumed from inside the host (``virsh suspend``) becomes
    PAUSED or ACTIVE, as a user of a real cloud would expect.
    """
    if status == DELETING:
        return Transition(DELETED, None) if observed == "absent" else None
    if observed == "error":
        return Transition(ERROR, None) if status == BUILD or task_state == REBUILDING else None
    if status == BUILD and observed == "running":
        return Transition(ACTIVE, None)
    if status in (ACTIVE, PAUSED) and observed == "shutoff":
        return Transition(SHUTOFF, None)
    if status == ACTIVE and observed == "paused" and task_state in (None, PAUSING):
        return Transition(PAUSED, None)
    if status == PAUSED and observed == "running" and task_state in (None, UNPAUSING):
        return Transition(ACTIVE, None)
    if status == SHUTOFF and observed == "running" and task_state in (None, POWERING_ON):
        return Transition(ACTIVE, None)  # None: started from inside the host (e.g. virsh)
    if status == SHUTOFF and task_state == REBUILDING:
        return Transition(SHUTOFF, None) if observed == "shutoff" else None
    if status == SHUTOFF and task_state == RESIZING:
        return Transition(SHUTOFF, None) if observed == "shutoff" and operation_done else None
    if status == REBOOT and observed in ("running", "shutoff") and operation_done:
        return Transition(ACTIVE if observed == "running" else SHUTOFF, None)
    return None
