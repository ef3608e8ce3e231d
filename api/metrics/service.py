"""Rendering ``/metrics``: the process's (or every process's) metrics plus the host gauges."""

from __future__ import annotations

from datetime import timedelta

from prometheus_client import (
    REGISTRY,
    CollectorRegistry,
    generate_latest,
    multiprocess,
)
from prometheus_client.core import GaugeMetricFamily
from sqlalchemy.orm import Session

from api.config import Settings
from api.db import utcnow
from api.guest_metrics import service as guest_metrics
from api.guest_metrics.registry import METRICS as GUEST_METRICS
from api.metrics import MULTIPROCESS
from api.metrics.repository import host_counts


def _hosts_family(session: Session, settings: Settings) -> GaugeMetricFamily:
    # Read from the database at scrape time: the answer is the same whichever API process
    # is scraped, and costs one grouped count instead of work on every heartbeat.
    now = utcnow()
    cutoff = now - timedelta(seconds=settings.host_down_after_seconds)
    progress_cutoff = now - timedelta(seconds=settings.host_degraded_after_seconds)
    family = GaugeMetricFamily(
        "minicloud_hosts", "Compute hosts by state (up: a heartbeat within "
        "host_down_after_seconds; degraded: heartbeating, but no reconcile pass within "
        "host_degraded_after_seconds) and whether they are enabled.",
        labels=["state", "enabled"])
    counts = host_counts(session, cutoff, progress_cutoff)
    for enabled in (True, False):
        for state in ("up", "down", "degraded"):
            family.add_metric([state, "true" if enabled else "false"],
                              counts.get((enabled, state), 0))
    return family


def _guest_families(session: Session, settings: Settings) -> list[GaugeMetricFamily]:
    # Per-server gauges for at most guest_metrics_exposed_servers servers (the busiest), so
    # the number of series stays bounded whatever the fleet (docs/operations.md).
    _, reporting, gauges = guest_metrics.exposed_gauges(session, settings, utcnow())
    families = [GaugeMetricFamily(
        "minicloud_guest_servers_reporting",
        "Servers with guest metrics in the last complete finest rollup bucket.",
        value=reporting)]
    for m in GUEST_METRICS:
        family = GaugeMetricFamily(
            f"minicloud_guest_{m.name}", f"{m.description} ({m.unit}; the last complete "
            "finest bucket; the busiest guest_metrics_exposed_servers servers only).",
            labels=["server_id", "project_id"])
        for g in gauges:
            family.add_metric([g.server_id, g.project_id], g.values[m.name])
        families.append(family)
    return families


class _Families:
    """A one-off collector of already built families."""

    def __init__(self, *families: GaugeMetricFamily) -> None:
        self.families = families

    def collect(self) -> tuple[GaugeMetricFamily, ...]:
        return self.families


def exposition(session: Session, settings: Settings) -> bytes:
    """The Prometheus text exposition of the API's metrics."""
    if MULTIPROCESS:
        registry = CollectorRegistry()
        multiprocess.MultiProcessCollector(registry)  # type: ignore[no-untyped-call]
        body = generate_latest(registry)
    else:
        body = generate_latest(REGISTRY)
    extra = CollectorRegistry()
    extra.register(_Families(_hosts_family(session, settings),
                             *_guest_families(session, settings)))
    return body + generate_latest(extra)
