"""Desired state vs observed state -> actions: a pure function, level-triggered.

``plan`` looks only at what the API wants now and what libvirt and the instances directory
hold now, never at what happened before, so running it again after a crash (or twice in a row)
asks only for what is still missing. Every action it emits is idempotent in the executor.

Decision table for a server the API lists (``desired``), by the domain found for it::

    desired   domain missing                 shut off                  running
    running   build, start                   (redefine,) start         -            (+ reboot)
    shutoff   build (not ERROR)              (redefine)                stop
    absent    remove                         remove                    remove

A pending reboot (``reboot.id`` not done yet) on an existing domain adds ``reboot``; on a
missing domain the build's first boot is the reboot. A crashed domain gets a hard reboot when
it should run and a stop when it should not. ``redefine`` applies a changed flavor (resize)
to a shut-off domain. Domains carrying minicloud metadata that the API does not list at all are
removed; instance directories with neither a listed server nor a domain are deleted.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Literal

from compute_agent.client import DesiredServer

ActionKind = Literal["remove", "stop", "build", "redefine", "start", "reboot", "clean_files"]
DomainState = Literal["running", "shutoff", "error"]

# Removals first (they free memory and disk), then stops, then the work that needs resources.
_ORDER: dict[str, int] = {"remove": 0, "clean_files": 1, "stop": 2, "redefine": 3, "build": 4,
                          "start": 5, "reboot": 6}


@dataclass(frozen=True)
class SeenDomain:
    """A minicloud domain as libvirt shows it: power state and the sizes it was defined with."""

    state: DomainState
    vcpus: int
    ram_mb: int


@dataclass(frozen=True)
class Action:
    """One step for the executor. ``server`` is None for leftovers the API no longer lists.

    ``start`` (build only): start the domain after defining it. ``hard`` (reboot only).
    ``report`` (remove only): confirm ``absent`` to the API afterwards.
    """

    kind: ActionKind
    server_id: str
    server: DesiredServer | None = None
    start: bool = False
    hard: bool = False

    @property
    def reboot_id(self) -> str | None:
        """The reboot request this action settles (a reboot, or a build that boots it)."""
        if self.server is None or self.server.reboot is None:
            return None
        return self.server.reboot.id if self.kind in ("reboot", "build", "start") else None


def reboot_key(server_id: str, reboot_id: str) -> str:
    """How the executor remembers that a reboot request was performed."""
    return f"{server_id}:{reboot_id}"


def _resized(server: DesiredServer, dom: SeenDomain) -> bool:
    return (dom.vcpus, dom.ram_mb) != (server.flavor.vcpus, server.flavor.ram_mb)


def plan(desired: list[DesiredServer], domains: dict[str, SeenDomain],
         instance_dirs: set[str], reboots_done: set[str]) -> list[Action]:
    """The actions that make the host match ``desired`` (see the module docstring)."""
    actions: list[Action] = []
    listed = {s.server_id for s in desired}
    for s in desired:
        dom = domains.get(s.server_id)
        pending_reboot = s.reboot is not None and \
            reboot_key(s.server_id, s.reboot.id) not in reboots_done
        if s.desired == "absent":
            actions.append(Action("remove", s.server_id, s))
        elif dom is None:
            if s.desired == "running":
                actions.append(Action("build", s.server_id, s, start=True))
            elif s.status != "ERROR":
                # A failed build keeps whatever it left; the user deletes the server.
                actions.append(Action("build", s.server_id, s, start=False))
        elif s.desired == "running":
            if dom.state == "error":
                actions.append(Action("reboot", s.server_id, s, hard=True))
            elif dom.state == "shutoff":
                if _resized(s, dom):
                    actions.append(Action("redefine", s.server_id, s))
                actions.append(Action("start", s.server_id, s))
            elif pending_reboot:
                assert s.reboot is not None
                actions.append(Action("reboot", s.server_id, s, hard=s.reboot.type == "hard"))
        else:  # desired shutoff
            if dom.state in ("running", "error"):
                actions.append(Action("stop", s.server_id, s))
            elif _resized(s, dom):
                actions.append(Action("redefine", s.server_id, s))
    for sid in sorted(set(domains) - listed):
        actions.append(Action("remove", sid))
    for sid in sorted(instance_dirs - listed - set(domains)):
        actions.append(Action("clean_files", sid))
    return sorted(actions, key=lambda a: _ORDER[a.kind])
