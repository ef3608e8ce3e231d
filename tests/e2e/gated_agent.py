"""A test-only agent that stops at a named point of a cold migration until the test lets it go.

The test arms a gate (a point and a server id), waits until the agent's reconcile thread is
held there, does something to the rest of the system (kill -9 the API, restart it) and then
releases the gate. Points:

* ``export``: the source is about to send the server's files (its ``migrate_export``);
* ``upload``: the source is half-way through streaming the disk overlay to the API's relay;
* ``import``: the destination defined the server and is about to fetch the relayed files;
* ``imported``: the destination put the files in place and recorded its ``migrate_import``,
  not reported yet;
* ``start``: the destination is about to start the moved server;
* ``remove``: the source is about to remove its copy of the moved server.

The agent also keeps what its own thread last saw in libvirt (``last_seen``), so a test can
read both hosts' domains without touching a ``Hypervisor`` from another thread.
"""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from compute_agent import agent as agent_module
from compute_agent.client import DesiredServer, Operation
from compute_agent.reconcile import Action, SeenDomain

POINTS = ("export", "upload", "import", "imported", "start", "remove")


@dataclass
class Gate:
    """One armed point: ``reached`` is set when the agent is held, ``release`` lets it go."""

    point: str
    server_id: str
    reached: threading.Event = field(default_factory=threading.Event)
    release: threading.Event = field(default_factory=threading.Event)

    def hold(self, point: str, server_id: str) -> None:
        """Block the calling agent thread here when this gate matches (once)."""
        if point != self.point or server_id != self.server_id or self.release.is_set():
            return
        self.reached.set()
        self.release.wait(600)


class _GatedBody:
    """A file streamed in two halves with the gate in between (an upload in flight)."""

    def __init__(self, path: Path, gate: Gate, server_id: str) -> None:
        self.path, self.gate, self.server_id = path, gate, server_id

    def __iter__(self) -> Iterator[bytes]:
        data = self.path.read_bytes()
        half = len(data) // 2
        yield data[:half]
        self.gate.hold("upload", self.server_id)
        yield data[half:]


class GatedAgent(agent_module.Agent):
    """The real agent, with the gates above at its migration steps."""

    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self.gate = Gate("", "")
        self.last_seen: dict[str, SeenDomain] = {}
        client = self.client

        def put_migration_file(server_id: str, name: str, path: Path, sha256: str) -> None:
            body: Any = (_GatedBody(path, self.gate, server_id) if name == "disk"
                         else path.read_bytes())
            # The client's own retrying request, with a body that pauses half-way for the disk.
            client._request(
                "PUT", f"/v1/agent/servers/{server_id}/migration/{name}", content=body,
                timeout=600.0, headers={"X-Content-Sha256": sha256,
                                        "Content-Type": "application/octet-stream",
                                        "Content-Length": str(path.stat().st_size)})
        client.put_migration_file = put_migration_file  # type: ignore[method-assign]

    def arm(self, point: str, server_id: str) -> Gate:
        """Hold the agent at ``point`` for ``server_id`` (replacing any earlier gate)."""
        assert point in POINTS, point
        self.gate.release.set()
        self.gate = Gate(point, server_id)
        return self.gate

    def seen(self) -> dict[str, SeenDomain]:
        found = super().seen()
        self.last_seen = dict(found)
        return found

    def _migrate_export(self, server: DesiredServer, op: Operation) -> None:
        self.gate.hold("export", server.server_id)
        super()._migrate_export(server, op)

    def _migrate_import(self, server: DesiredServer, op: Operation) -> None:
        self.gate.hold("import", server.server_id)
        super()._migrate_import(server, op)

    def _operation_performed(self, server: DesiredServer, op: Operation) -> None:
        super()._operation_performed(server, op)
        if op.kind == "migrate_import":
            self.gate.hold("imported", server.server_id)

    def _start(self, server_id: str) -> None:
        self.gate.hold("start", server_id)
        super()._start(server_id)

    def _execute(self, action: Action) -> None:
        if action.kind == "remove":
            self.gate.hold("remove", action.server_id)
        super()._execute(action)
