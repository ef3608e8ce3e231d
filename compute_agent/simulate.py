"""Simulated hosts: N agents in one process, each on its own libvirt test-driver node.

Each host gets ``<root>/<name>/node.xml`` (``hypervisor.write_test_node_xml``) of a chosen
size and its own state, instances and image-cache directories. A ``test:///<file>``
connection keeps its domains in the connection itself, so every simulated agent keeps its
``Hypervisor`` open for its whole life (closing it would forget the domains). Everything else
is the real agent: real HTTP, real image downloads, real overlays and seed ISOs.
"""

from __future__ import annotations

import re
import threading
import time
from dataclasses import dataclass
from pathlib import Path

from compute_agent.agent import Agent, ensure_enrolled
from compute_agent.config import AgentSettings
from compute_agent.hypervisor import Hypervisor, write_test_node_xml


@dataclass(frozen=True)
class HostSize:
    """The size of one simulated host."""

    vcpus: int
    ram_mb: int
    disk_gb: int


DEFAULT_SIZES = (HostSize(4, 8192, 100), HostSize(8, 16384, 200), HostSize(16, 65536, 500))


def parse_size(text: str) -> HostSize:
    """``VCPUS:RAM_MB:DISK_GB`` -> HostSize.

    Raises:
        ValueError: not three positive integers separated by colons.
    """
    m = re.fullmatch(r"\s*(\d+):(\d+):(\d+)\s*", text)
    if not m or min(int(g) for g in m.groups()) < 1:
        raise ValueError(f"a host size is VCPUS:RAM_MB:DISK_GB, not {text!r}")
    return HostSize(*(int(g) for g in m.groups()))


@dataclass
class SimulatedHost:
    """One running simulated agent."""

    name: str
    uri: str
    agent: Agent
    thread: threading.Thread


def start_simulated(base: AgentSettings, sizes: list[HostSize], root: Path, *,
                    tokens: list[str] | None = None,
                    admin_token: str | None = None) -> list[SimulatedHost]:
    """Enroll (or reuse the credentials of) and start one agent thread per size.

    Host ``i`` is named ``<base.name>-sim<i>``; ``tokens[i]`` enrolls it, else a token is
    minted with ``admin_token``. Stored credentials are reused on later starts.

    Raises:
        AgentApiError: enrollment fails.
        HypervisorError: a test-driver connection cannot be opened.
    """
    root = Path(root).resolve()
    hosts = []
    for i, size in enumerate(sizes):
        name = f"{base.name}-sim{i}"
        home = root / name
        home.mkdir(parents=True, exist_ok=True)
        uri = write_test_node_xml(home / "node.xml", size.vcpus, size.ram_mb,
                                  network=base.network_name)
        settings = base.model_copy(update={
            "name": name, "libvirt_uri": uri, "state_dir": home / "state",
            "instances_dir": home / "instances", "image_cache_dir": home / "images",
            "disk_gb": size.disk_gb, "virt_type": "qemu"})
        token = tokens[i] if tokens and i < len(tokens) else None
        cred = ensure_enrolled(settings, "qemu", token=token,
                               admin_token=None if token else admin_token)
        agent = Agent(settings, cred, Hypervisor(uri), "qemu")
        thread = threading.Thread(target=agent.run, name=f"agent-{name}", daemon=True)
        thread.start()
        hosts.append(SimulatedHost(name, uri, agent, thread))
    return hosts


def stop_simulated(hosts: list[SimulatedHost], timeout: float | None = None) -> None:
    """Stop every simulated agent and close its connections (forgetting its domains).

    Waits up to ``timeout`` s (default: the long-poll bound + 5) for pending long-polls.
    """
    if timeout is None:
        timeout = max((h.agent.settings.long_poll_wait for h in hosts), default=0) + 5
    for h in hosts:
        h.agent.stop()
    deadline = time.monotonic() + timeout
    for h in hosts:
        h.thread.join(max(0.0, deadline - time.monotonic()))
        h.agent.close()
        h.agent.hv.close()
