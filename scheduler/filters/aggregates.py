"""Host aggregates: every key/value of the flavor's extra_specs is among the host's tags."""

from __future__ import annotations

from scheduler.framework import AGGREGATE, HostCheck, HostState, RequestSpec, Snapshot


def tag(value: object) -> str:
    """Compare tags as text, JSON-style for booleans: ``True``, ``"true"`` and ``"True"`` match."""
    if isinstance(value, bool):
        return "true" if value else "false"
    text = str(value)
    return text.lower() if text.lower() in ("true", "false") else text


class AggregatesFilter:
    """Refuses with ``aggregate`` hosts missing a required key or carrying another value."""

    name = "aggregates"

    def prepare(self, spec: RequestSpec, snapshot: Snapshot) -> HostCheck | None:
        """Applies only when the flavor has extra_specs."""
        if not spec.extra_specs:
            return None
        required = [(key, tag(value)) for key, value in spec.extra_specs.items()]

        def check(host: HostState) -> str | None:
            tags = host.aggregates
            for key, value in required:
                if key not in tags or tag(tags[key]) != value:
                    return AGGREGATE
            return None

        return check
