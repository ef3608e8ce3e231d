"""The agent's Prometheus metrics, served on a loopback port when ``metrics_port`` is set.

Off by default. The values are read at scrape time, so serving them costs nothing between
scrapes: ``minicloud_agent_image_cache_bytes`` (bytes of the cached base images).
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path

from prometheus_client import CollectorRegistry, start_http_server
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


def registry_for(settings: AgentSettings) -> CollectorRegistry:
    """The agent's metrics (a registry of its own: the process collectors come with it)."""
    registry = CollectorRegistry()
    registry.register(ImageCacheCollector(settings.image_cache_dir))
    return registry


def serve(settings: AgentSettings) -> bool:
    """Serve ``/metrics`` on 127.0.0.1:``metrics_port`` in a daemon thread; False when off."""
    if settings.metrics_port is None:
        return False
    start_http_server(settings.metrics_port, addr="127.0.0.1", registry=registry_for(settings))
    return True
