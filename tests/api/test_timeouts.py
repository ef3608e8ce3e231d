"""Stuck transitions end: BUILD, DELETING, REBOOT, resizing, pausing, unpausing time out.

Servers are backdated by two hours and swept with hour-long limits. The module runs on a
database of its own whose one API process (the in-process app) has limits far longer than that,
so no background sweep (every API process runs one) ends a backdated server before the test's
own sweep counts it.
"""

from __future__ import annotations

from collections.abc import Iterator
from datetime import timedelta
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy import func, select

from api.config import Settings
from api.db import utcnow
from api.models import Allocation, Host, Server
from api.servers import timeouts
from api.usage import host_monitor
from tests.agent_factories import (
    EnrolledHost,
    db,
    enroll_host,
    hold_silence,
    inventory,
    make_server,
    observe,
    set_server,
)
from tests.conftest import Cloud, private_cloud
from tests.factories import Account, make_account

HOUR = 3600


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    """The app on a fresh database of this module's own; its background sweep waits days."""
    with private_cloud(tmp_path_factory.mktemp("timeouts"),
                       build_timeout_seconds=100 * HOUR, delete_timeout_seconds=100 * HOUR,
                       operation_timeout_seconds=100 * HOUR) as c:
        yield c


@pytest.fixture(scope="module")
def settings(cloud: Cloud) -> Settings:
    """This module's settings (limits of days: see ``limits`` for the test's own)."""
    return cloud.settings


@pytest.fixture(scope="module")
def client(cloud: Cloud) -> TestClient:
    """The app on this module's database (no other API process uses it)."""
    return cloud.client


@pytest.fixture(scope="module")
def admin(cloud: Cloud) -> dict[str, str]:
    """Headers of this module's bootstrapped admin."""
    return cloud.admin


@pytest.fixture
def limits(settings: Settings) -> Settings:
    """The test settings with hour-long limits (the sweep's ``now`` does the waiting)."""
    return settings.model_copy(update={"build_timeout_seconds": HOUR,
                                       "delete_timeout_seconds": HOUR,
                                       "operation_timeout_seconds": HOUR})


@pytest.fixture
def host(client: TestClient, admin: dict[str, str]) -> EnrolledHost:
    """A fresh enrolled host with an inventory (it never heartbeats: down)."""
    h = enroll_host(client, admin)
    assert client.put("/v1/agent/inventory", json=inventory(), headers=h.headers).is_success
    return h


@pytest.fixture
def acct(client: TestClient, admin: dict[str, str]) -> Account:
    """A tenant."""
    return make_account(client, admin)


def _backdate(client: TestClient, sid: str, seconds: int) -> None:
    with db(client) as s:
        server = s.get(Server, sid)
        assert server is not None
        server.updated_at = utcnow() - timedelta(seconds=seconds)


def _sweep(client: TestClient, settings: Settings, after: int | None = None) -> int:
    """One sweep at now (or ``after`` seconds past the epoch of the backdating)."""
    with db(client) as s:
        now = None if after is None else utcnow() - timedelta(seconds=2 * HOUR - after)
        return timeouts.sweep(s, settings, now=now)


def _get(client: TestClient, acct: Account, sid: str) -> Any:
    return client.get(f"/v1/servers/{sid}", headers=acct.headers)


def _allocations(client: TestClient, sid: str) -> int:
    with db(client) as s:
        return int(s.scalar(select(func.count()).where(Allocation.server_id == sid)) or 0)


def test_a_build_that_never_runs_ends_in_error_and_frees_its_allocations(
    client: TestClient, acct: Account, host: EnrolledHost, limits: Settings
) -> None:
    sid = make_server(client, acct.project_id, host.id)
    _backdate(client, sid, 2 * HOUR)
    # An hour minus a second after its last change it is still building.
    assert _sweep(client, limits, after=HOUR - 1) == 0
    assert _get(client, acct, sid).json()["status"] == "BUILD"
    assert _sweep(client, limits) == 1
    body = _get(client, acct, sid).json()
    assert body["status"] == "ERROR"
    assert body["fault"]["code"] == "build_timeout"
    assert "build" in body["fault"]["message"]
    assert _allocations(client, sid) == 0
    # Another API process sweeping at the same moment finds nothing left to do.
    assert _sweep(client, limits) == 0
    # The user cleans up as after any failed build: delete, the agent confirms.
    assert client.delete(f"/v1/servers/{sid}", headers=acct.headers).status_code == 202
    assert observe(client, host.headers, sid, "absent")["status"] == "DELETED"


def test_a_stuck_delete_on_a_live_host_ends_in_error_and_keeps_its_allocations(
    client: TestClient, acct: Account, host: EnrolledHost, limits: Settings
) -> None:
    sid = make_server(client, acct.project_id, host.id, status="ACTIVE", task_state=None)
    assert client.delete(f"/v1/servers/{sid}", headers=acct.headers).status_code == 202
    assert client.post("/v1/agent/heartbeat", json={"observed": []},
                       headers=host.headers).is_success  # the host is up
    _backdate(client, sid, 2 * HOUR)
    assert _sweep(client, limits) == 1
    body = _get(client, acct, sid).json()
    assert (body["status"], body["fault"]["code"]) == ("ERROR", "delete_timeout")
    assert _allocations(client, sid) == 3  # the disk may still be there
    # Deleting again retries.
    assert client.delete(f"/v1/servers/{sid}", headers=acct.headers).status_code == 202
    assert _get(client, acct, sid).json()["status"] == "DELETING"


def test_a_stuck_delete_on_a_down_host_is_finished(
    client: TestClient, admin: dict[str, str], acct: Account, limits: Settings
) -> None:
    silent = enroll_host(client, admin)
    assert client.post("/v1/agent/heartbeat", json={"observed": []},
                       headers=silent.headers).is_success
    def long_ago() -> None:
        with db(client) as s:  # its last heartbeat was long ago: down
            h = s.get(Host, silent.id)
            assert h is not None
            h.last_heartbeat_at = utcnow() - timedelta(
                seconds=limits.host_down_after_seconds + 1)
    hold_silence(silent.id, long_ago)
    sid = make_server(client, acct.project_id, silent.id, status="ACTIVE", task_state=None)
    assert client.delete(f"/v1/servers/{sid}", headers=acct.headers).status_code == 202
    _backdate(client, sid, 2 * HOUR)
    assert _sweep(client, limits) == 1
    assert _get(client, acct, sid).status_code == 404
    assert _allocations(client, sid) == 0


@pytest.mark.parametrize(("start", "body", "step"), [
    ("ACTIVE", {"action": "reboot", "type": "soft"}, "reboot"),
    ("ACTIVE", {"action": "pause"}, "pause"),
    ("PAUSED", {"action": "unpause"}, "unpause"),
])
def test_a_stuck_operation_ends_in_error_naming_its_step(
    client: TestClient, acct: Account, host: EnrolledHost, limits: Settings, start: str,
    body: dict[str, Any], step: str,
) -> None:
    sid = make_server(client, acct.project_id, host.id, status=start, task_state=None)
    r = client.post(f"/v1/servers/{sid}/actions", json=body, headers=acct.headers)
    assert r.status_code == 202, r.text
    _backdate(client, sid, 2 * HOUR)
    assert _sweep(client, limits, after=HOUR - 1) == 0
    assert _sweep(client, limits) == 1
    got = _get(client, acct, sid).json()
    assert (got["status"], got["task_state"], got["fault"]["code"]) == (
        "ERROR", None, f"{step}_timeout")
    assert _allocations(client, sid) == 3  # it ran: its room stays until it is deleted


def test_a_stuck_resize_ends_in_error(
    client: TestClient, acct: Account, host: EnrolledHost, limits: Settings
) -> None:
    sid = make_server(client, acct.project_id, host.id, status="SHUTOFF", task_state=None)
    set_server(client, sid, task_state="resizing")  # as an accepted resize leaves it
    _backdate(client, sid, 2 * HOUR)
    assert _sweep(client, limits) == 1
    got = _get(client, acct, sid).json()
    assert (got["status"], got["fault"]["code"]) == ("ERROR", "resize_timeout")


def test_progress_restarts_the_clock(
    client: TestClient, acct: Account, host: EnrolledHost, limits: Settings
) -> None:
    sid = make_server(client, acct.project_id, host.id)
    _backdate(client, sid, 2 * HOUR)
    assert observe(client, host.headers, sid, "running")["status"] == "ACTIVE"
    assert _sweep(client, limits) == 0
    assert _get(client, acct, sid).json()["status"] == "ACTIVE"


def test_the_host_monitor_task_runs_the_sweep(
    client: TestClient, acct: Account, host: EnrolledHost, limits: Settings
) -> None:
    sid = make_server(client, acct.project_id, host.id)
    _backdate(client, sid, 2 * HOUR)
    host_monitor.sweep_once(client.app.state.sessionmaker, limits)  # type: ignore[attr-defined]
    assert _get(client, acct, sid).json()["fault"]["code"] == "build_timeout"
