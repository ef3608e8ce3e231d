"""Hard server-group policies: affinity (all members on one host) and anti-affinity (all apart)."""

from __future__ import annotations

from scheduler.framework import AFFINITY, ANTI_AFFINITY, HostCheck, HostState, RequestSpec, Snapshot


class ServerGroupFilter:
    """Refuses with ``affinity`` hosts other than the members' host, and with ``anti_affinity``
    hosts that already run a member. The first member of an affinity group may go anywhere."""

    name = "server_group"

    def prepare(self, spec: RequestSpec, snapshot: Snapshot) -> HostCheck | None:
        """Applies only to the hard policies."""
        group = spec.server_group
        if group is None:
            return None
        members = group.member_host_ids
        if group.policy == "anti-affinity":
            def apart(host: HostState) -> str | None:
                return ANTI_AFFINITY if members.get(host.id, 0) > 0 else None
            return apart
        if group.policy == "affinity" and members:
            def together(host: HostState) -> str | None:
                return None if members.get(host.id, 0) > 0 else AFFINITY
            return together
        return None
