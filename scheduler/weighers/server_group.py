"""Soft server-group policies: prefer hosts with more (soft-affinity) or fewer
(soft-anti-affinity) members of the request's group."""

from __future__ import annotations

from scheduler.framework import HostScore, HostState, RequestSpec


class SoftAffinityWeigher:
    """Raw score: members of the group already on the host."""

    name = "soft_affinity"

    def prepare(self, spec: RequestSpec) -> HostScore | None:
        """Applies only to soft-affinity groups."""
        group = spec.server_group
        if group is None or group.policy != "soft-affinity":
            return None
        members = group.member_host_ids

        def score(host: HostState) -> float:
            return float(members.get(host.id, 0))

        return score


class SoftAntiAffinityWeigher:
    """Raw score: minus the members of the group already on the host."""

    name = "soft_anti_affinity"

    def prepare(self, spec: RequestSpec) -> HostScore | None:
        """Applies only to soft-anti-affinity groups."""
        group = spec.server_group
        if group is None or group.policy != "soft-anti-affinity":
            return None
        members = group.member_host_ids

        def score(host: HostState) -> float:
            return -float(members.get(host.id, 0))

        return score
