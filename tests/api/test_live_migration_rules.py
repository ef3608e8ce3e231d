"""The pure rules of a live migration: which host performs which step, what power each host
keeps, and what billing makes of the switch-over's pause."""

from __future__ import annotations

import pytest

from api.servers import states
from api.usage.hooks import billing_target

# (task state, asking host's role, operation it performs)
STEPS = [
    ("live-preparing", "destination", "live_prepare"),
    ("live-preparing", "source", None),  # the source waits, its guest running
    ("live-migrating", "source", "live_migrate"),
    ("live-migrating", "destination", None),  # libvirt brings the domain in
]


@pytest.mark.parametrize(("task", "role", "operation"), STEPS)
def test_each_host_performs_only_its_step(task: str, role: states.Role,
                                          operation: str | None) -> None:
    assert states.pending_operation(states.MIGRATING, task, role) == operation


@pytest.mark.parametrize("task", sorted(states.LIVE_TASKS))
def test_a_live_migration_keeps_the_guest_running(task: str) -> None:
    assert states.desired_power(states.MIGRATING, task) == "running"


def test_the_switch_over_pause_changes_no_billing_state() -> None:
    assert billing_target(states.MIGRATING, "paused") is None
    # Outside a migration a pause is billed as one.
    assert billing_target(states.ACTIVE, "paused") == "paused"
    # A cold move's stopped guest stops compute billing, as a user's stop would.
    assert billing_target(states.MIGRATING, "shutoff") == "stopped"
