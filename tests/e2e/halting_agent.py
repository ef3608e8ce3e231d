"""A test-only ``minicloud-agent``: the real agent, halted for ever right after one step.

tests/e2e runs it as the agent process (``AgentProcess`` picks it when
``MINICLOUD_TEST_HALT_AFTER`` is set), waits for the marker file, then kills it with SIGKILL
there, to prove a restarted agent finishes the work without doing any of it twice. Steps:

* ``define``: a build defined the domain but has not started it;
* ``start``: a build started the domain, not reported yet;
* an operation kind (``reboot``, ``resize``): the operation was performed and recorded, not
  reported yet;
* ``rotate-saved``: a credential rotation stored its next credential, the API knows nothing;
* ``rotate-sent``: the API took the next credential, the agent has not promoted it yet.

The marker file (``MINICLOUD_TEST_HALT_MARKER``) receives the server id (the host id for the
rotation steps).
"""

from __future__ import annotations

import logging
import os
import time
from pathlib import Path

from compute_agent import main as agent_main
from compute_agent.agent import Agent
from compute_agent.client import DesiredServer, Operation
from compute_agent.config import Credential

log = logging.getLogger("minicloud.agent")


class HaltingAgent(Agent):
    """The agent, halting its reconcile thread after ``MINICLOUD_TEST_HALT_AFTER``."""

    step = os.environ.get("MINICLOUD_TEST_HALT_AFTER", "")
    marker = Path(os.environ.get("MINICLOUD_TEST_HALT_MARKER", "halted"))

    def _halt(self, step: str, server_id: str) -> None:
        if step != self.step:
            return
        self.marker.write_text(server_id)
        log.warning("halted after %s of %s (test agent)", step, server_id)
        while True:
            time.sleep(3600)

    def _start(self, server_id: str) -> None:
        self._halt("define", server_id)
        super()._start(server_id)
        self._halt("start", server_id)

    def _send_rotation(self, cred: Credential) -> None:
        self._halt("rotate-saved", self.host_id)
        super()._send_rotation(cred)
        self._halt("rotate-sent", self.host_id)

    def _operation_performed(self, server: DesiredServer, op: Operation) -> None:
        super()._operation_performed(server, op)
        self._halt(op.kind, server.server_id)


def main() -> None:
    """``compute_agent.main.run`` with the halting agent."""
    agent_main.Agent = HaltingAgent  # type: ignore[misc]
    agent_main.run()


if __name__ == "__main__":
    main()
