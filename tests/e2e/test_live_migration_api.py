"""Live migration through the API with real agents on libvirt test-driver nodes and a real
API process: endpoint registration, the refusals, a failed copy and an abort. The test driver
cannot migrate a domain, so every move here ends back on its source; the successful move is
``tests/e2e/test_live_migration_qemu.py`` (real QEMU, two libvirt daemons).
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from compute_agent.spec import InstancePaths
from tests.e2e.stack import (
    ADMIN,
    WAIT,
    ThreadAgent,
    allocated,
    create_server,
    host,
    server,
    start_test_driver_agent,
    upload_image,
    wait_status,
    wait_until,
)
from tests.e2e.two_hosts import NOTHING, TINY
from tests.factories import Account, unique

pytestmark = [pytest.mark.libvirt]

# What the agents register: libvirtd over TCP on this port, and QEMU's default port range
# (the qemu.conf named does not exist).
LIBVIRT_PORT = 16999


@pytest.fixture(scope="module")
def image(api: str, member: Account, tmp_path_factory: pytest.TempPathFactory) -> str:
    path = tmp_path_factory.mktemp("img") / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
    return str(upload_image(api, member.headers, path.read_bytes(), "qcow2")["id"])


def start(api: str, home: Path, zone: str, *, endpoint: bool) -> ThreadAgent:
    extra: dict[str, Any] = {}
    if endpoint:
        extra = {"migration_address": "127.0.0.1", "migration_transport": "tcp",
                 "migration_libvirt_port": LIBVIRT_PORT, "qemu_conf": home / "no-qemu.conf"}
    return start_test_driver_agent(api, home, network="none", az=zone, **extra)


@pytest.fixture
def pair(api: str, tmp_path: Path) -> Iterator[list[ThreadAgent]]:
    """Two hosts of one zone that both registered a migration endpoint."""
    zone = unique("az")
    agents = [start(api, tmp_path / name, zone, endpoint=True) for name in ("a", "b")]
    yield agents
    for a in agents:
        a.stop()


def post_action(api: str, headers: dict[str, str], sid: str, **body: Any) -> httpx.Response:
    return httpx.post(f"{api}/v1/servers/{sid}/actions", json={"action": "migrate"} | body,
                      headers=headers)


def migrations(api: str, sid: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{api}/v1/servers/{sid}/migrations", headers=ADMIN)
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()["migrations"]
    return found


def events(api: str, headers: dict[str, str], sid: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{api}/v1/servers/{sid}/events", headers=headers)
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()["events"]
    return found


def ledger(api: str, headers: dict[str, str], sid: str) -> list[str]:
    r = httpx.get(f"{api}/v1/usage/servers/{sid}", headers=headers,
                  params={"start": "2000-01-01T00:00:00Z", "end": "2100-01-01T00:00:00Z"})
    assert r.status_code == 200, r.text
    return [e["kind"] for e in r.json()["entries"]]


def boot(api: str, member: Account, image: str, zone: str) -> dict[str, Any]:
    s = create_server(api, member.headers, "tiny", image, availability_zone=zone)
    wait_status(api, member.headers, s["id"], "ACTIVE")
    return server(api, ADMIN, s["id"])


def test_agents_register_their_migration_endpoint_on_the_host(
        api: str, pair: list[ThreadAgent], tmp_path: Path) -> None:
    a = pair[0]
    endpoint = host(api, a.host_id)["migration_endpoint"]
    assert endpoint == {
        "libvirt_uri": f"qemu+tcp://127.0.0.1:{LIBVIRT_PORT}/system",
        "migrate_uri": "tcp://127.0.0.1", "port_min": 49152, "port_max": 49215,
        "instances_dir": str(a.agent.instances),
        "image_cache_dir": str((tmp_path / "a" / "images").resolve())}
    # An agent without a migration address takes no live migrations.
    plain = start(api, tmp_path / "plain", unique("az"), endpoint=False)
    try:
        assert host(api, plain.host_id)["migration_endpoint"] is None
    finally:
        plain.stop()


def test_live_migration_refusals(api: str, member: Account, image: str, tmp_path: Path) -> None:
    zone = unique("az")
    # The server boots on the only host of its zone (it has an endpoint); the other host
    # joins afterwards without one.
    with_endpoint = start(api, tmp_path / "a", zone, endpoint=True)
    without: ThreadAgent | None = None
    try:
        sid = boot(api, member, image, zone)["id"]
        without = start(api, tmp_path / "b", zone, endpoint=False)
        # A tenant may not name a host.
        r = post_action(api, member.headers, sid, live=True, host=without.name)
        assert (r.status_code, r.json()["code"]) == (403, "admin_required")
        # The named host has no endpoint; unnamed, hosts without one are not candidates (and
        # the zone's only other host has none).
        r = post_action(api, ADMIN, sid, live=True, host=without.name)
        assert (r.status_code, r.json()["code"]) == (409, "migration_endpoint_missing")
        r = post_action(api, ADMIN, sid, live=True)
        assert (r.status_code, r.json()["code"]) == (409, "no_valid_host")
        r = httpx.post(f"{api}/v1/servers/{sid}/migration/abort", headers=member.headers)
        assert (r.status_code, r.json()["code"]) == (409, "migration_not_abortable")
        r = httpx.post(f"{api}/v1/servers/{sid}/actions", json={"action": "stop"},
                       headers=member.headers)
        assert r.status_code == 202, r.text
        wait_status(api, member.headers, sid, "SHUTOFF")
        r = post_action(api, ADMIN, sid, live=True)
        assert (r.status_code, r.json()["code"]) == (409, "invalid_state")
        assert server(api, ADMIN, sid)["host"] == with_endpoint.name
        assert migrations(api, sid) == []
    finally:
        with_endpoint.stop()
        if without is not None:
            without.stop()


def test_a_failed_copy_leaves_the_guest_running_on_its_source(
        api: str, member: Account, image: str, pair: list[ThreadAgent]) -> None:
    s = boot(api, member, image, pair[0].az)
    sid = s["id"]
    source, dest = pair if s["host"] == pair[0].name else pair[::-1]

    r = post_action(api, member.headers, sid, live=True)
    assert r.status_code == 202, r.text

    # The destination prepares its files, then the source's copy fails (the test driver
    # cannot migrate): the server is back, ACTIVE on its source, with the fault.
    back = wait_until(lambda: (x := server(api, ADMIN, sid))["fault"] is not None
                      and x["status"] == "ACTIVE" and x["task_state"] is None and x, WAIT,
                      "server back on its source")
    assert back["host"] == source.name
    assert back["fault"]["code"] == "migration_failed"
    assert "source" in back["fault"]["message"]
    [m] = migrations(api, sid)
    assert (m["kind"], m["status"]) == ("live", "reverted")
    assert m["fault"]["code"] == "migration_failed"
    assert (m["source_host_id"], m["dest_host_id"]) == (source.host_id, dest.host_id)
    assert source.agent.hv.list_managed()[sid].observed == "running"
    wait_until(lambda: sid not in dest.agent.hv.list_managed()
               and not InstancePaths(dest.agent.instances, sid).directory.exists(),
               WAIT, "the destination's files removed")
    assert allocated(api, dest.host_id) == NOTHING
    assert allocated(api, source.host_id) == TINY
    seen = [(e["action"], e["result"], e["details"].get("kind"))
            for e in events(api, member.headers, sid) if e["action"] == "migrate"]
    assert seen == [("migrate", "accepted", "live"), ("migrate", "success", None),
                    ("migrate", "error", None)]
    # The guest never stopped: one run in the ledger.
    assert ledger(api, member.headers, sid) == ["created", "running"]


def test_an_abort_while_the_destination_prepares_reverts_at_once(
        api: str, member: Account, image: str, pair: list[ThreadAgent]) -> None:
    s = boot(api, member, image, pair[0].az)
    sid = s["id"]
    source, dest = pair if s["host"] == pair[0].name else pair[::-1]
    dest.stop()  # the destination never gets to prepare
    r = post_action(api, ADMIN, sid, live=True, host=dest.name)
    assert r.status_code == 202, r.text
    moving = server(api, member.headers, sid)
    assert (moving["status"], moving["task_state"]) == ("MIGRATING", "live-preparing")
    assert allocated(api, dest.host_id) == TINY
    assert allocated(api, source.host_id) == TINY

    r = httpx.post(f"{api}/v1/servers/{sid}/migration/abort", headers=member.headers)
    assert r.status_code == 200, r.text
    assert (r.json()["status"], r.json()["fault"]["code"]) == ("reverted", "migration_aborted")
    back = server(api, ADMIN, sid)
    assert (back["status"], back["task_state"], back["host"]) == ("ACTIVE", None, source.name)
    assert back["fault"]["code"] == "migration_aborted"
    assert allocated(api, dest.host_id) == NOTHING
    assert allocated(api, source.host_id) == TINY
    assert source.agent.hv.list_managed()[sid].observed == "running"
    r = httpx.post(f"{api}/v1/servers/{sid}/migration/abort", headers=member.headers)
    assert (r.status_code, r.json()["code"]) == (409, "migration_not_abortable")
    assert ledger(api, member.headers, sid) == ["created", "running"]


def test_a_drain_moves_active_servers_live_and_shutoff_ones_cold(
        api: str, member: Account, image: str, tmp_path: Path) -> None:
    zone = unique("az")
    # Both servers boot on the zone's only host; the other host joins afterwards.
    source = start(api, tmp_path / "a", zone, endpoint=True)
    dest: ThreadAgent | None = None
    try:
        running = boot(api, member, image, zone)["id"]
        stopped = boot(api, member, image, zone)["id"]
        r = httpx.post(f"{api}/v1/servers/{stopped}/actions", json={"action": "stop"},
                       headers=member.headers)
        assert r.status_code == 202, r.text
        wait_status(api, member.headers, stopped, "SHUTOFF")
        dest = start(api, tmp_path / "b", zone, endpoint=True)

        r = httpx.post(f"{api}/v1/hosts/{source.host_id}/drain", headers=ADMIN)
        assert r.status_code == 202, r.text

        def settled() -> dict[str, Any] | None:
            v: dict[str, Any] = httpx.get(f"{api}/v1/hosts/{source.host_id}/drain",
                                          headers=ADMIN).json()
            return v if not v["moving"] else None

        view = wait_until(settled, WAIT, "the drain's moves settled")
        assert migrations(api, running)[0]["kind"] == "live"
        assert migrations(api, stopped)[0]["kind"] == "cold"
        assert (server(api, ADMIN, stopped)["host"], view["completed"]) == (dest.name, 1)
        # The test driver cannot copy a running domain: the live move is refused with its
        # fault and the guest keeps running on the draining host.
        assert [(x["server_id"], x["code"]) for x in view["refused"]] == [
            (running, "migration_failed")]
        back = server(api, ADMIN, running)
        assert (back["status"], back["host"]) == ("ACTIVE", source.name)
    finally:
        httpx.delete(f"{api}/v1/hosts/{source.host_id}/drain", headers=ADMIN)
        source.stop()
        if dest is not None:
            dest.stop()
