"""``minicloud-agent``: run the compute agent of this host (or N simulated hosts).

    minicloud-agent --api URL --enroll TOKEN [--name N --az ZONE ...]   first start
    minicloud-agent --api URL                                           later starts
    minicloud-agent --api URL --admin-token ADMIN                      enroll automatically
    minicloud-agent --api URL --simulate 3 --admin-token ADMIN [--sim-size 4:8192:100 ...]
                    [--sim-load load.json]

Flags override ``MINICLOUD_AGENT_*`` environment variables (see ``compute_agent.config``).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType
from typing import Any

from compute_agent.agent import Agent, ensure_enrolled
from compute_agent.client import AgentApiError
from compute_agent.config import AgentSettings, resolve_virt_type
from compute_agent.hypervisor import Hypervisor, HypervisorError, write_test_node_xml
from compute_agent.metrics import AgentMetrics
from compute_agent.metrics import serve as serve_metrics
from compute_agent.simulate import DEFAULT_SIZES, parse_size, start_simulated, stop_simulated

log = logging.getLogger("minicloud.agent")

_FLAGS: dict[str, str] = {
    "api": "api_url", "name": "name", "az": "availability_zone", "state_dir": "state_dir",
    "instances_dir": "instances_dir", "image_cache_dir": "image_cache_dir",
    "libvirt_uri": "libvirt_uri", "virt_type": "virt_type", "network": "network",
    "disk_gb": "disk_gb", "reserved_vcpus": "reserved_vcpus",
    "reserved_ram_mb": "reserved_ram_mb", "reserved_disk_gb": "reserved_disk_gb",
    "heartbeat_interval": "heartbeat_interval", "shutdown_timeout": "shutdown_timeout",
    "console_interval": "console_interval", "guest_metrics_interval": "guest_metrics_interval",
    "sim_load": "simulated_load_file",
}


def parser() -> argparse.ArgumentParser:
    """The command line."""
    p = argparse.ArgumentParser(prog="minicloud-agent", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--api", help="API base URL")
    p.add_argument("--enroll", action="append", metavar="TOKEN",
                   help="enrollment token (repeat once per simulated host)")
    p.add_argument("--admin-token", default=os.environ.get("MINICLOUD_TOKEN"),
                   help="mint an enrollment token with this admin token (env MINICLOUD_TOKEN)")
    p.add_argument("--name", help="host name (default: this machine's)")
    p.add_argument("--az", help="availability zone (default nova)")
    p.add_argument("--state-dir", type=Path)
    p.add_argument("--instances-dir", type=Path)
    p.add_argument("--image-cache-dir", type=Path)
    p.add_argument("--libvirt-uri",
                   help="libvirt URI (default qemu:///system); 'auto' falls back to the test "
                        "driver when no libvirtd is reachable")
    p.add_argument("--virt-type", choices=["auto", "kvm", "qemu"])
    p.add_argument("--network", help="libvirt network for NICs, or 'none'")
    p.add_argument("--disk-gb", type=int)
    p.add_argument("--reserved-vcpus", type=int)
    p.add_argument("--reserved-ram-mb", type=int)
    p.add_argument("--reserved-disk-gb", type=int)
    p.add_argument("--heartbeat-interval", type=float)
    p.add_argument("--shutdown-timeout", type=float)
    p.add_argument("--console-interval", type=float)
    p.add_argument("--simulate", type=int, default=0, metavar="N",
                   help="run N simulated hosts on libvirt's test driver")
    p.add_argument("--sim-size", action="append", default=[], metavar="VCPUS:RAM_MB:DISK_GB",
                   help="size of simulated host i (repeat; default cycles 4/8/16 CPUs)")
    p.add_argument("--sim-dir", type=Path, help="directory of the simulated hosts' files")
    p.add_argument("--guest-metrics-interval", type=float,
                   help="seconds between guest metrics reports (default 10)")
    p.add_argument("--sim-load", type=Path, metavar="FILE",
                   help="TEST ONLY: JSON {server name or id: CPU %%} added to the servers' "
                        "CPU time (re-read when it changes; docs/operations.md)")
    p.add_argument("--log-level", default=os.environ.get("MINICLOUD_LOG_LEVEL", "INFO"))
    return p


def settings_from(args: argparse.Namespace) -> AgentSettings:
    """AgentSettings from the environment, overridden by the flags given."""
    overrides: dict[str, Any] = {field: getattr(args, flag) for flag, field in _FLAGS.items()
                                 if getattr(args, flag) is not None}
    return AgentSettings(**overrides)


def open_hypervisor(settings: AgentSettings) -> tuple[AgentSettings, Hypervisor]:
    """Connect to libvirt; ``--libvirt-uri auto`` falls back to the test driver, loudly.

    ``auto`` tries ``qemu:///system``; when no libvirtd answers, the agent runs on a libvirt
    test-driver node the size of this machine, whose "servers" are not real VMs and are
    forgotten when the agent stops.

    Raises:
        HypervisorError: the (explicit) URI cannot be opened.
    """
    if settings.libvirt_uri != "auto":
        return settings, Hypervisor(settings.libvirt_uri)
    try:
        return (settings.model_copy(update={"libvirt_uri": "qemu:///system"}),
                Hypervisor("qemu:///system"))
    except HypervisorError as exc:
        log.warning("!!! no libvirtd (%s): using libvirt's TEST DRIVER; servers will not be "
                    "real VMs and vanish when the agent stops", exc)
    settings.state_dir.mkdir(mode=0o700, parents=True, exist_ok=True)
    memory_mb = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2**20
    uri = write_test_node_xml(Path(settings.state_dir).resolve() / "node.xml",
                              os.cpu_count() or 1, memory_mb, network=settings.network_name)
    return settings.model_copy(update={"libvirt_uri": uri}), Hypervisor(uri)


def _on_signal(stop: threading.Event) -> None:
    def handler(_sig: int, _frame: FrameType | None) -> None:
        stop.set()
    signal.signal(signal.SIGTERM, handler)
    signal.signal(signal.SIGINT, handler)


def run(argv: list[str] | None = None) -> None:
    """Entry point of ``minicloud-agent``; exits 2 on a setup error."""
    args = parser().parse_args(argv)
    if not args.enroll and os.environ.get("MINICLOUD_AGENT_ENROLL_TOKEN"):
        # For service managers: the token comes from the unit's environment file.
        args.enroll = [os.environ["MINICLOUD_AGENT_ENROLL_TOKEN"]]
    logging.basicConfig(level=args.log_level,
                        format="%(asctime)s %(levelname)s %(threadName)s %(message)s")
    # One line per HTTP request (every long-poll) drowns what the agent does.
    logging.getLogger("httpx").setLevel(logging.WARNING)
    settings = settings_from(args)
    metrics = AgentMetrics()
    serve_metrics(settings, metrics)  # only with MINICLOUD_AGENT_METRICS_PORT
    stop = threading.Event()
    _on_signal(stop)
    try:
        if args.simulate:
            sizes = [parse_size(s) for s in args.sim_size]
            sizes += [DEFAULT_SIZES[i % len(DEFAULT_SIZES)]
                      for i in range(len(sizes), args.simulate)]
            root = args.sim_dir or settings.state_dir / "simulated"
            hosts = start_simulated(settings, sizes[:args.simulate], root,
                                    tokens=args.enroll, admin_token=args.admin_token)
            log.info("running %d simulated hosts: %s", len(hosts),
                     ", ".join(h.name for h in hosts))
            stop.wait()
            stop_simulated(hosts)
            return
        settings, hv = open_hypervisor(settings)
        virt_type = resolve_virt_type(settings.virt_type, lambda: (
            (False, "the test driver runs no guests") if hv.uri.startswith("test:") else
            hv.kvm_probe(settings.instances_dir, settings.kvm_probe_timeout)))
        token = args.enroll[0] if args.enroll else None
        cred = ensure_enrolled(settings, virt_type, token=token,
                               admin_token=None if token else args.admin_token)
    except (AgentApiError, HypervisorError, ValueError, OSError) as exc:
        log.error("%s", exc)
        sys.exit(2)
    agent = Agent(settings, cred, hv, virt_type, metrics)
    log.info("agent %s (%s, virt type %s) serving %s", settings.name, settings.libvirt_uri,
             virt_type, settings.api_url)
    worker = threading.Thread(target=agent.run, name="reconcile", daemon=True)
    worker.start()
    stop.wait()
    agent.stop()
    # Let a pending long-poll end (so the API is not left answering a closed connection), but
    # do not wait out a graceful guest shutdown: every step is restart-safe, so whatever is cut
    # short here is finished by the next start.
    worker.join(timeout=settings.long_poll_wait + 5)
    agent.close()
    hv.close()


if __name__ == "__main__":
    run()
