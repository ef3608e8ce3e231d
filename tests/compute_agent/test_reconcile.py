"""reconcile.plan as a specification: desired servers + libvirt's view -> actions, table-driven."""

from __future__ import annotations

import uuid
from typing import Any

import pytest

from compute_agent.client import DesiredServer
from compute_agent.reconcile import SeenDomain, operation_key, plan

A = "11111111-1111-4111-8111-111111111111"
B = "22222222-2222-4222-8222-222222222222"


def server(sid: str = A, desired: str = "running", status: str = "BUILD", *,
           operation: dict[str, Any] | None = None, vcpus: int = 1, ram_mb: int = 512,
           generation: int = 3) -> DesiredServer:
    """A desired server as GET /v1/agent/servers lists it."""
    return DesiredServer.model_validate({
        "server_id": sid, "project_id": str(uuid.uuid4()), "name": "s", "hostname": "s",
        "flavor": {"vcpus": vcpus, "ram_mb": ram_mb, "disk_gb": 1},
        "image": {"id": str(uuid.uuid4()), "sha256": "0" * 64, "disk_format": "qcow2",
                  "size": 1},
        "user_data": None, "key_data": None, "desired": desired, "operation": operation,
        "status": status, "task_state": None, "generation": generation})


SOFT_REBOOT = {"id": "reboot-7", "kind": "reboot", "params": {"type": "soft"}}
HARD_REBOOT = {"id": "reboot-7", "kind": "reboot", "params": {"type": "hard"}}
RESIZE = {"id": "resize-7", "kind": "resize", "params": {}}


def dom(state: str, vcpus: int = 1, ram_mb: int = 512) -> SeenDomain:
    """A minicloud domain libvirt reports."""
    return SeenDomain(state, vcpus, ram_mb)  # type: ignore[arg-type]


def steps(*args: Any, **kwargs: Any) -> list[tuple[str, str]]:
    return [(a.kind, a.server_id) for a in plan(*args, **kwargs)]


CASES = [
    # (why, desired, domains, instance dirs, done operations, expected [(kind, id)])
    ("new server: build and start", [server()], {}, set(), set(), [("build", A)]),
    ("running as wanted: nothing", [server(status="ACTIVE")], {A: dom("running")}, {A}, set(),
     []),
    ("killed after define: start", [server()], {A: dom("shutoff")}, {A}, set(),
     [("start", A)]),
    ("stop requested", [server(desired="shutoff", status="ACTIVE")], {A: dom("running")}, {A},
     set(), [("stop", A)]),
    ("stopped as wanted: nothing", [server(desired="shutoff", status="SHUTOFF")],
     {A: dom("shutoff")}, {A}, set(), []),
    ("SHUTOFF lost its domain: define it again, do not start",
     [server(desired="shutoff", status="SHUTOFF")], {}, {A}, set(), [("build", A)]),
    ("failed build keeps its leftovers until deleted",
     [server(desired="shutoff", status="ERROR")], {}, {A}, set(), []),
    ("delete: remove domain and files", [server(desired="absent", status="DELETING")],
     {A: dom("running")}, {A}, set(), [("remove", A)]),
    ("delete already done on libvirt (killed before confirming): remove again (reports)",
     [server(desired="absent", status="DELETING")], {}, set(), set(), [("remove", A)]),
    ("soft reboot pending", [server(status="REBOOT", operation=SOFT_REBOOT)],
     {A: dom("running")}, {A}, set(), [("operation", A)]),
    ("reboot already done: nothing",
     [server(status="REBOOT", operation=SOFT_REBOOT)],
     {A: dom("running")}, {A}, {operation_key(A, "reboot-7")}, []),
    ("reboot of a shut-off domain: a start (the operation settles with it)",
     [server(status="REBOOT", operation=HARD_REBOOT)],
     {A: dom("shutoff")}, {A}, set(), [("start", A), ("operation", A)]),
    ("reboot of a missing domain: a build (the operation settles with it)",
     [server(status="REBOOT", operation=HARD_REBOOT)],
     {}, set(), set(), [("build", A), ("operation", A)]),
    ("resize pending: the operation redefines, no separate redefine",
     [server(desired="shutoff", status="SHUTOFF", vcpus=2, operation=RESIZE)],
     {A: dom("shutoff")}, {A}, set(), [("operation", A)]),
    ("resize pending on a domain still powering off: stop first, the operation waits",
     [server(desired="shutoff", status="SHUTOFF", vcpus=2, operation=RESIZE)],
     {A: dom("running")}, {A}, set(), [("stop", A)]),
    ("pause requested", [server(desired="paused", status="ACTIVE")], {A: dom("running")},
     {A}, set(), [("pause", A)]),
    ("paused as wanted: nothing", [server(desired="paused", status="PAUSED")],
     {A: dom("paused")}, {A}, set(), []),
    ("unpause requested", [server(status="PAUSED")], {A: dom("paused")}, {A}, set(),
     [("unpause", A)]),
    ("stop a paused domain", [server(desired="shutoff", status="PAUSED")], {A: dom("paused")},
     {A}, set(), [("stop", A)]),
    ("PAUSED lost its domain: defined again, not booted (its memory is gone)",
     [server(desired="paused", status="PAUSED")], {}, set(), set(), [("build", A)]),
    ("PAUSED found shut off (host rebooted): left off", [server(desired="paused",
     status="PAUSED")], {A: dom("shutoff")}, {A}, set(), []),
    ("PAUSED found crashed: stopped", [server(desired="paused", status="PAUSED")],
     {A: dom("error")}, {A}, set(), [("stop", A)]),
    ("crashed domain that should run: hard reboot", [server(status="ACTIVE")],
     {A: dom("error")}, {A}, set(), [("reboot", A)]),
    ("resized while shut off: redefine", [server(desired="shutoff", status="SHUTOFF", vcpus=2)],
     {A: dom("shutoff")}, {A}, set(), [("redefine", A)]),
    ("resized and started: redefine then start", [server(status="SHUTOFF", vcpus=2)],
     {A: dom("shutoff")}, {A}, set(), [("redefine", A), ("start", A)]),
    ("domain the API no longer lists: removed", [], {B: dom("running")}, {B}, set(),
     [("remove", B)]),
    ("instance dir with no server and no domain: cleaned", [], {}, {B}, set(),
     [("clean_files", B)]),
    ("removals come before builds", [server(A), server(B, desired="absent", status="DELETING")],
     {B: dom("running")}, {B}, set(), [("remove", B), ("build", A)]),
]


@pytest.mark.parametrize(("why", "desired", "domains", "dirs", "done", "expected"), CASES,
                         ids=[c[0] for c in CASES])
def test_plan(why: str, desired: list[DesiredServer], domains: dict[str, SeenDomain],
              dirs: set[str], done: set[str], expected: list[tuple[str, str]]) -> None:
    assert steps(desired, domains, dirs, done) == expected, why


def test_plan_is_level_triggered_same_input_same_plan() -> None:
    desired = [server(A), server(B, desired="shutoff", status="ACTIVE")]
    domains = {B: dom("running")}
    assert steps(desired, domains, set(), set()) == steps(desired, domains, set(), set())


def test_build_flags() -> None:
    [build] = plan([server()], {}, set(), set())
    assert build.start is True
    [define_only] = plan([server(desired="shutoff", status="SHUTOFF")], {}, set(), set())
    assert define_only.start is False
    [lost_pause] = plan([server(desired="paused", status="PAUSED")], {}, set(), set())
    assert lost_pause.start is False
    [op] = plan([server(status="REBOOT", operation=HARD_REBOOT)],
                {A: dom("running")}, set(), set())
    assert op.kind == "operation" and op.server is not None
    assert op.server.operation is not None
    assert (op.server.operation.id, op.server.operation.params) == ("reboot-7",
                                                                     {"type": "hard"})
    [crashed] = plan([server(status="ACTIVE")], {A: dom("error")}, set(), set())
    assert (crashed.kind, crashed.hard) == ("reboot", True)
    [frozen] = plan([server(desired="shutoff", status="PAUSED")], {A: dom("paused")},
                    set(), set())
    assert (frozen.kind, frozen.hard) == ("stop", True)  # no ACPI for a paused guest


def live(task: str, operation: dict[str, Any] | None = None) -> DesiredServer:
    """A server in a live migration, as either of its hosts lists it."""
    s = server(status="MIGRATING", operation=operation)
    return s.model_copy(update={"task_state": task})


LIVE_PREPARE = {"id": "live_prepare-4", "kind": "live_prepare", "params": {}}
LIVE_MIGRATE = {"id": "live_migrate-5", "kind": "live_migrate", "params": {}}

LIVE_CASES = [
    # (why, desired, domains, instance dirs, done operations, expected [(kind, id)])
    ("destination prepares: files only, no build",
     [live("live-preparing", LIVE_PREPARE)], {}, set(), set(), [("operation", A)]),
    ("destination after its step: the incoming domain is never removed nor started",
     [live("live-migrating")], {A: dom("paused")}, {A}, set(), []),
    ("destination waiting for the copy: nothing is built",
     [live("live-migrating")], {}, {A}, set(), []),
    ("source copies: the running guest is left alone",
     [live("live-migrating", LIVE_MIGRATE)], {A: dom("running")}, {A}, set(),
     [("operation", A)]),
    ("source after the copy: the domain left, nothing is rebuilt",
     [live("live-migrating", LIVE_MIGRATE)], {}, {A}, {operation_key(A, "live_migrate-5")}, []),
    ("source while the destination prepares: the running guest stays as it is",
     [live("live-preparing")], {A: dom("running")}, {A}, set(), []),
    ("a deleted moving server is still removed",
     [server(desired="absent", status="DELETING")], {A: dom("running")}, {A}, set(),
     [("remove", A)]),
]


@pytest.mark.parametrize(("why", "desired", "domains", "dirs", "done", "expected"), LIVE_CASES,
                         ids=[c[0] for c in LIVE_CASES])
def test_plan_leaves_a_live_migration_to_libvirt(
        why: str, desired: list[DesiredServer], domains: dict[str, SeenDomain], dirs: set[str],
        done: set[str], expected: list[tuple[str, str]]) -> None:
    assert steps(desired, domains, dirs, done) == expected, why
