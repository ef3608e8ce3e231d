"""Desired state vs observed state -> actions: a pure function, level-triggered.

``plan`` looks only at what the API wants now and what libvirt and the instances directory
hold now (plus the operations already performed), never at what happened before, so running
it again after a crash (or twice in a row) asks only for what is still missing. Every action
it emits is idempotent in the executor.

Decision table for a server the API lists (``desired``), by the domain found for it::

    desired   domain missing        shut off              running     paused
    running   build, start          (redefine,) start     -           unpause
    paused    build                 (redefine)            pause       -
    shutoff   build (not ERROR)     (redefine)            stop        stop (at once)
    absent    remove                remove                remove      remove

A paused guest whose domain is found shut off (the host rebooted) lost its memory: it is left
off and reported so (the API then shows SHUTOFF), never booted afresh behind the user's back.

A crashed domain gets a hard reboot when it should run and a stop otherwise. ``redefine``
applies a changed flavor to a shut-off domain. A pending one-shot operation
(``DesiredServer.operation``, not performed yet) adds an ``operation`` action after the power
actions; the agent's handler for its kind performs it (a reboot whose domain this pass has just
booted is settled by that boot). An operation waits while the domain is on its way to
shut-off. Domains carrying minicloud metadata that the API does not list at all are removed;
instance directories with neither a listed server nor a domain are deleted.

A server in a live migration (MIGRATING with a ``live-*`` task) gets no power action on
either host, only its pending operation: the source never restarts or rebuilds a domain that
has just left for the destination, and the destination never builds, starts or removes the
domain libvirt is bringing in.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from compute_agent.client import DesiredServer

ActionKind = Literal["remove", "stop", "build", "redefine", "start", "reboot", "unpause",
                     "pause", "operation", "clean_files"]
DomainState = Literal["running", "shutoff", "paused", "error"]

# The task states of a live migration (api.servers.states.LIVE_TASKS).
LIVE_TASKS = frozenset({"live-preparing", "live-migrating"})

# Removals first (they free memory and disk), then stops, then the work that needs resources,
# then pending operations (which may rely on the power actions before them).
_ORDER: dict[str, int] = {"remove": 0, "clean_files": 1, "stop": 2, "redefine": 3, "build": 4,
                          "start": 5, "reboot": 6, "unpause": 7, "pause": 8, "operation": 9}


@dataclass(frozen=True)
class SeenDomain:
    """A minicloud domain as libvirt shows it: power state and the sizes it was defined with."""

    state: DomainState
    vcpus: int
    ram_mb: int


@dataclass(frozen=True)
class Action:
    """One step for the executor. ``server`` is None for leftovers the API no longer lists.

    ``start`` (build only): start the domain after defining it. ``hard`` (reboot: reset, not
    ACPI; stop: destroy at once, for a paused guest that cannot see the power button).
    """

    kind: ActionKind
    server_id: str
    server: DesiredServer | None = None
    start: bool = False
    hard: bool = False


def operation_key(server_id: str, operation_id: str) -> str:
    """How the executor remembers that an operation was performed."""
    return f"{server_id}:{operation_id}"


def _resized(server: DesiredServer, dom: SeenDomain) -> bool:
    return (dom.vcpus, dom.ram_mb) != (server.flavor.vcpus, server.flavor.ram_mb)


def plan(desired: list[DesiredServer], domains: dict[str, SeenDomain],
         instance_dirs: set[str], operations_done: set[str]) -> list[Action]:
    """The actions that make the host match ``desired`` (see the module docstring)."""
    actions: list[Action] = []
    listed = {s.server_id for s in desired}
    for s in desired:
        dom = domains.get(s.server_id)
        pending = s.operation is not None and \
            operation_key(s.server_id, s.operation.id) not in operations_done
        # A resize operation redefines the domain itself; no separate redefine for it.
        redefine = dom is not None and _resized(s, dom) and not (
            pending and s.operation is not None and s.operation.kind == "resize")
        ready = True  # the domain is where the pending operation may run
        if s.status == "MIGRATING" and s.task_state in LIVE_TASKS and s.desired != "absent":
            pass  # hands off: libvirt moves the domain (see the module docstring)
        elif s.desired == "absent":
            actions.append(Action("remove", s.server_id, s))
            ready = False
        elif dom is None:
            if s.desired == "running":
                actions.append(Action("build", s.server_id, s, start=True))
            elif s.status != "ERROR":
                # A failed build keeps whatever it left; the user deletes the server.
                actions.append(Action("build", s.server_id, s, start=False))
            else:
                ready = False
        elif dom.state == "error" and s.desired == "running":
            actions.append(Action("reboot", s.server_id, s, hard=True))
        elif s.desired == "running":
            if dom.state == "shutoff":
                if redefine:
                    actions.append(Action("redefine", s.server_id, s))
                actions.append(Action("start", s.server_id, s))
            elif dom.state == "paused":
                actions.append(Action("unpause", s.server_id, s))
        elif s.desired == "paused" and dom.state != "error":
            if dom.state == "running":
                actions.append(Action("pause", s.server_id, s))
            elif dom.state == "shutoff" and redefine:
                actions.append(Action("redefine", s.server_id, s))
        elif dom.state in ("running", "error", "paused"):  # desired shutoff (or a crash)
            actions.append(Action("stop", s.server_id, s, hard=dom.state == "paused"))
            ready = False
        elif redefine:
            actions.append(Action("redefine", s.server_id, s))
        if pending and ready:
            actions.append(Action("operation", s.server_id, s))
    for sid in sorted(set(domains) - listed):
        actions.append(Action("remove", sid))
    for sid in sorted(instance_dirs - listed - set(domains)):
        actions.append(Action("clean_files", sid))
    return sorted(actions, key=lambda a: _ORDER[a.kind])
