"""Availability zone: when the request names one, only hosts in it."""

from __future__ import annotations

from scheduler.framework import AVAILABILITY_ZONE, HostCheck, HostState, RequestSpec, Snapshot


class AvailabilityZoneFilter:
    """Refuses hosts of other zones with ``availability_zone``."""

    name = "availability_zone"

    def prepare(self, spec: RequestSpec, snapshot: Snapshot) -> HostCheck | None:
        """Applies only when the request names a zone."""
        zone = spec.availability_zone
        if not zone:
            return None

        def check(host: HostState) -> str | None:
            return None if host.availability_zone == zone else AVAILABILITY_ZONE

        return check
