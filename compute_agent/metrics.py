"""The agent's Prometheus metrics, served on a loopback port when ``metrics_port`` is set.

Off by default. ``minicloud_agent_image_cache_bytes`` (bytes of the cached base images) is
measured at scrape time, so it costs nothing between scrapes; the reconcile loop records
``minicloud_agent_reconcile_pass_seconds`` (a histogram of pass durations, the long-poll wait
excluded) and ``minicloud_agent_libvirt_errors_total`` (libvirt failures, whole-host or one
server's) as it goes.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector

from compute_agent.config import AgentSettings


def directory_bytes(directory: Path) -> int:
    """Bytes of the regular files under ``directory`` (0 when it does not exist)."""
    total = 0
    for path in directory.rglob("*"):
        try:
            if path.is_file() and not path.is_symlink():
                total += path.stat().st_size
        except OSError:  # removed while walking: an eviction is not an error
            continue
    return total


class ImageCacheCollector(Collector):
    """``minicloud_agent_image_cache_bytes``, measured when scraped."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def collect(self) -> Iterator[GaugeMetricFamily]:
        yield GaugeMetricFamily("minicloud_agent_image_cache_bytes",
                                "Bytes of base images in the agent's image cache.",
                                value=directory_bytes(self.directory))


class AgentMetrics:
    """The metrics one agent's loop records, in a registry of its own (so several simulated
    agents in one process, or tests, never share counts)."""

    def __init__(self) -> None:
        self.registry = CollectorRegistry()
        self.pass_seconds = Histogram(
            "minicloud_agent_reconcile_pass_seconds",
            "Duration of one reconcile pass (plan, actions, reports), long-poll excluded.",
            buckets=(0.01, 0.05, 0.1, 0.5, 1, 5, 10, 30, 60, 300), registry=self.registry)
        self.libvirt_errors = Counter(
            "minicloud_agent_libvirt_errors", "libvirt failures met by the reconcile loop.",
            registry=self.registry)


def registry_for(settings: AgentSettings,
                 metrics: AgentMetrics | None = None) -> CollectorRegistry:
    """The agent's metrics: the loop's (``metrics``, when given) plus the image cache size."""
    registry = metrics.registry if metrics is not None else CollectorRegistry()
    registry.register(ImageCacheCollector(settings.image_cache_dir))
    return registry


def serve(settings: AgentSettings, metrics: AgentMetrics | None = None) -> bool:
    """Serve ``/metrics`` on 127.0.0.1:``metrics_port`` in a daemon thread; False when off."""
    if settings.metrics_port is None:
        return False
    start_http_server(settings.metrics_port, addr="127.0.0.1",
                      registry=registry_for(settings, metrics))
    return True
