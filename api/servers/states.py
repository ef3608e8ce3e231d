"""The server state machine, as pure functions shared by the API and the agent endpoints.

Statuses (what a tenant sees)::

    BUILD --(agent sees it running)--> ACTIVE <--stop/start--> SHUTOFF
      |                                  |  ^
      |                                reboot (soft|hard) -> REBOOT --(agent sees it running)--+
      +--(spawn fails)--> ERROR (fault code + message)
    any status except DELETING --delete--> DELETING --(agent confirms gone)--> DELETED (hidden)

``task_state`` names the transition in flight (None when settled). A server with no host (not
yet placed) is deleted at once, since no agent holds anything for it.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

BUILD, ACTIVE, SHUTOFF, REBOOT, DELETING, ERROR, DELETED = (
    "BUILD", "ACTIVE", "SHUTOFF", "REBOOT", "DELETING", "ERROR", "DELETED",
)
STATUSES = (BUILD, ACTIVE, SHUTOFF, REBOOT, DELETING, ERROR)

# task_state values
SCHEDULING, SPAWNING, POWERING_OFF, POWERING_ON = (
    "scheduling", "spawning", "powering-off", "powering-on",
)
REBOOTING, REBOOTING_HARD, DELETING_TASK, RESIZING = (
    "rebooting", "rebooting-hard", "deleting", "resizing",
)

Action = Literal["start", "stop", "reboot", "resize"]
Observed = Literal["running", "shutoff", "absent", "error"]
Desired = Literal["running", "shutoff", "absent"]

# Which actions each settled status accepts; anything else is 409 ``invalid_state``.
ALLOWED: dict[str, frozenset[str]] = {
    BUILD: frozenset(),
    ACTIVE: frozenset({"stop", "reboot"}),
    SHUTOFF: frozenset({"start", "resize"}),
    REBOOT: frozenset({"reboot"}),  # a hard reboot may override a stuck soft one
    DELETING: frozenset(),
    ERROR: frozenset(),
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
        return Transition(ACTIVE, POWERING_OFF)
    if action == "start":
        return Transition(SHUTOFF, POWERING_ON)
    if action == "reboot":
        return Transition(REBOOT, REBOOTING_HARD if reboot_type == "hard" else REBOOTING)
    if action == "resize":
        return Transition(SHUTOFF, RESIZING)
    raise ValueError(action)


def desired_power(status: str, task_state: str | None) -> Desired:
    """What the agent should make libvirt look like for a server in this state."""
    if status in (DELETING, DELETED):
        return "absent"
    if status == ERROR:
        # Keep a failed build's leftovers off: a user deletes an ERROR server to clean up.
        return "shutoff"
    if status == ACTIVE:
        return "shutoff" if task_state == POWERING_OFF else "running"
    if status == SHUTOFF:
        return "running" if task_state == POWERING_ON else "shutoff"
    return "running"  # BUILD, REBOOT


def on_observed(status: str, task_state: str | None, observed: Observed,
                reboot_done: bool = False, resize_done: bool = False) -> Transition | None:
    """Where an agent's observation takes the server; None when it changes nothing.

    ``reboot_done`` says the agent performed the reboot the server is waiting for (the agent
    echoes the reboot request id it completed); only then does REBOOT settle to ACTIVE.
    ``resize_done`` likewise says the agent applied the resize the server waits for (domain
    redefined with the new sizes, overlay grown); only then does SHUTOFF/``resizing`` settle.

    A guest that powers itself off (``ACTIVE`` observed ``shutoff`` with no task) becomes
    SHUTOFF, as a user of a real cloud would expect.
    """
    if status == DELETING:
        return Transition(DELETED, None) if observed == "absent" else None
    if observed == "error":
        return Transition(ERROR, None) if status == BUILD else None
    if status == BUILD and observed == "running":
        return Transition(ACTIVE, None)
    if status == ACTIVE and observed == "shutoff":
        return Transition(SHUTOFF, None)
    if status == ACTIVE and observed == "running" and task_state is None:
        return None
    if status == SHUTOFF and observed == "running" and task_state == POWERING_ON:
        return Transition(ACTIVE, None)
    if status == SHUTOFF and observed == "running" and task_state is None:
        return Transition(ACTIVE, None)  # started from inside the host (e.g. virsh)
    if status == SHUTOFF and task_state == RESIZING:
        return Transition(SHUTOFF, None) if observed == "shutoff" and resize_done else None
    if status == REBOOT and observed == "running" and reboot_done:
        return Transition(ACTIVE, None)
    if status == REBOOT and observed == "shutoff" and reboot_done:
        return Transition(SHUTOFF, None)
    return None
