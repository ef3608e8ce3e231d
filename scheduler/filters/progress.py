"""Making progress: a host whose agent heartbeats but whose reconcile loop is stuck."""

from __future__ import annotations

from scheduler.framework import DEGRADED, HostCheck, HostState, RequestSpec, Snapshot


class HostProgressFilter:
    """Refuses degraded hosts (``degraded``): the agent's reconcile loop completed no pass
    within ``host_degraded_after_seconds``, so a server placed there would never be built.
    A host that never reported its progress (an older agent) passes."""

    name = "progress"

    def prepare(self, spec: RequestSpec, snapshot: Snapshot) -> HostCheck:
        """Always applies."""
        oldest = snapshot.now - snapshot.host_degraded_after_seconds

        def check(host: HostState) -> str | None:
            if host.last_progress is not None and host.last_progress < oldest:
                return DEGRADED
            return None

        return check
