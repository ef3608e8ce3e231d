"""Fencing: a host that comes back removes the old copies of its evacuated servers first.

While the host was down an admin (or the automatic evacuation) rebuilt its servers on other
hosts. Their domains and disks may still be here: defined, and even running when only the
agent and the network died. Before the agent reports anything or starts any domain, it asks the
API for its fence orders (``GET /v1/agent/fencing``), powers off (destroy) and undefines each of
those domains, deletes their instance files, and reports them done. The API refuses every other
call of the host with 409 ``fencing_required`` until then, so an agent that skipped this would
learn nothing it could start. minicloud never marks a domain autostart, so a libvirtd that
restarts does not start one behind the agent's back either; the destroy covers a guest that
survived (a partition rather than a crash).
"""

from __future__ import annotations

import logging
from pathlib import Path

from compute_agent.client import AgentClient, FenceReport
from compute_agent.hypervisor import Hypervisor
from compute_agent.spec import InstancePaths

log = logging.getLogger("minicloud.agent")


def fence_one(hv: Hypervisor, instances: Path, server_id: str) -> FenceReport:
    """Destroy and undefine the server's domain and delete its files (idempotent).

    Raises:
        HypervisorError: libvirt fails (the order stays open and is retried).
        SpecError: ``server_id`` is not a canonical UUID.
        OSError: the files cannot be deleted.
    """
    state = hv.state(server_id)
    hv.destroy_and_undefine(server_id)
    paths = InstancePaths(instances, server_id)
    had_files = paths.directory.exists()
    paths.remove()
    if state is None:
        domain = "absent"
    elif state.observed in ("running", "paused", "error"):
        domain = "destroyed"
    else:
        domain = "undefined"
    log.warning("fenced evacuated server %s: domain %s, files %s", server_id, domain,
                "removed" if had_files else "absent")
    return FenceReport(server_id=server_id, domain=domain, files_removed=had_files)


def fence(client: AgentClient, hv: Hypervisor, instances: Path) -> int:
    """Carry out every fence order of this host and report them; returns how many.

    Loops until the API has no order left (one evacuated while this ran is fenced too).

    Raises:
        AgentApiError: the API cannot be reached.
        HypervisorError, SpecError, OSError: as ``fence_one``.
    """
    done = 0
    orders = client.fence_orders()
    while orders:
        reports = [fence_one(hv, instances, sid) for sid in orders]
        done += len(reports)
        orders = client.report_fenced(reports)
    return done
