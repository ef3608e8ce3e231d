"""Enabled and up: an admin has not disabled the host and its agent heartbeat is fresh."""

from __future__ import annotations

from scheduler.framework import DISABLED, DOWN, HostCheck, HostState, RequestSpec, Snapshot


class HostStatusFilter:
    """Refuses disabled hosts (``disabled``) and hosts with a stale heartbeat (``down``)."""

    name = "status"

    def prepare(self, spec: RequestSpec, snapshot: Snapshot) -> HostCheck:
        """Always applies."""
        oldest = snapshot.now - snapshot.host_down_after_seconds

        def check(host: HostState) -> str | None:
            if not host.enabled:
                return DISABLED
            if host.last_heartbeat is None or host.last_heartbeat < oldest:
                return DOWN
            return None

        return check
