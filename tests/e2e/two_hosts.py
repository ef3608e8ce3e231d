"""Real agents (threads) on the test libvirt hosts of the migration, drain and kill tests."""

from __future__ import annotations

import threading
from typing import Any

from compute_agent.agent import Agent, ensure_enrolled
from compute_agent.config import load_credential
from compute_agent.hypervisor import Hypervisor
from tests.e2e.libvirt_hosts import LibvirtHost
from tests.e2e.stack import (
    ADMIN,
    WAIT,
    ThreadAgent,
    agent_settings,
    enrollment_token,
    host,
    server,
    wait_until,
)
from tests.factories import unique

# A host's allocations with nothing placed on it, and those of one server of the tiny flavor.
NOTHING = {"VCPU": 0, "MEMORY_MB": 0, "DISK_GB": 0}
TINY = {"VCPU": 1, "MEMORY_MB": 512, "DISK_GB": 1}


def start_qemu_agent(api: str, lh: LibvirtHost, zone: str, *, endpoint: bool = False,
                     agent_class: type[Agent] = Agent) -> ThreadAgent:
    """An agent (virt type qemu, no network) on ``lh``, enrolled and up with its resources.

    With ``endpoint`` it registers ``lh``'s TCP listener and QEMU migration port range as its
    live-migration endpoint, and is up only once the API shows that endpoint.
    """
    name = unique("qhost")
    extra: dict[str, Any] = {}
    if endpoint:
        extra = {"migration_address": "127.0.0.1", "migration_transport": "tcp",
                 "migration_libvirt_port": lh.tcp_port,
                 "qemu_conf": lh.root / "etc" / "qemu.conf"}
    settings = agent_settings(api, lh.data_dir, name, lh.uri, network="none",
                              availability_zone=zone, **extra)
    cred = ensure_enrolled(settings, "qemu", token=enrollment_token(api))
    agent = agent_class(settings, cred, Hypervisor(lh.uri), "qemu")
    thread = threading.Thread(target=agent.run, name=f"agent-{name}", daemon=True)
    thread.start()
    wait_until(lambda: (h := host(api, cred.host_id))["state"] == "up" and h["resources"]
               and (not endpoint or h["migration_endpoint"]), WAIT, f"host {name} up")
    return ThreadAgent(agent, thread, cred.host_id, name, zone)


def restart_agent(old: ThreadAgent, agent_class: type[Agent] = Agent) -> ThreadAgent:
    """The same host's agent as a new process would be: same settings and credential."""
    settings = old.agent.settings
    cred = load_credential(settings.state_dir)
    assert cred is not None
    agent = agent_class(settings, cred, Hypervisor(settings.libvirt_uri), "qemu")
    thread = threading.Thread(target=agent.run, name=f"agent-{old.name}-2", daemon=True)
    thread.start()
    return ThreadAgent(agent, thread, old.host_id, old.name, old.az)


def wait_active_on(api: str, sid: str, host_name: str) -> dict[str, Any]:
    """The server once it is ACTIVE on ``host_name`` with no task (an admin's view)."""
    moved: dict[str, Any] = wait_until(
        lambda: (x := server(api, ADMIN, sid))["host"] == host_name
        and x["status"] == "ACTIVE" and x["task_state"] is None and x, WAIT,
        f"server ACTIVE on {host_name}")
    return moved


def source_first(api: str, sid: str, agents: list[ThreadAgent], hosts: list[LibvirtHost]
                 ) -> tuple[ThreadAgent, ThreadAgent, LibvirtHost, LibvirtHost]:
    """(source agent, other agent, source's libvirt host, other's) of a placed server, with
    ``agents[i]`` running on ``hosts[i]``."""
    first = server(api, ADMIN, sid)["host"]
    a, b = agents if first == agents[0].name else agents[::-1]
    lh_a, lh_b = hosts if a is agents[0] else hosts[::-1]
    return a, b, lh_a, lh_b
