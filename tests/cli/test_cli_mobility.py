"""`minicloud server migrate` and `minicloud host drain` against a live API with two real
agents on libvirt test-driver nodes."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.cli.conftest import Mc, parse
from tests.e2e.stack import (
    ADMIN,
    ThreadAgent,
    action,
    create_server,
    server,
    start_test_driver_agent,
    upload_image,
    wait_status,
)
from tests.factories import unique

pytestmark = [pytest.mark.libvirt]


@pytest.fixture
def pair(api_url: str, tmp_path: Path) -> Iterator[list[ThreadAgent]]:
    zone = unique("az")
    agents = [start_test_driver_agent(api_url, tmp_path / name, network="none", az=zone)
              for name in ("a", "b")]
    yield agents
    for a in agents:
        a.stop()


def test_migrate_with_wait_then_drain_and_delete_the_host(
        mc: Mc, api_url: str, pair: list[ThreadAgent], tmp_path: Path) -> None:
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    image = upload_image(api_url, ADMIN, disk.read_bytes(), "qcow2")["id"]
    s = create_server(api_url, ADMIN, "tiny", image, availability_zone=pair[0].az)
    wait_status(api_url, ADMIN, s["id"], "ACTIVE")
    action(api_url, ADMIN, s["id"], "stop")
    wait_status(api_url, ADMIN, s["id"], "SHUTOFF")
    first = server(api_url, ADMIN, s["id"])["host"]
    other = next(a.name for a in pair if a.name != first)

    refused = mc("server", "migrate", s["id"], "--host", first)
    assert refused.exit_code != 0 and "already on that host" in refused.output
    moved = parse(mc("--json", "server", "migrate", s["id"], "--host", other, "--wait"))
    assert (moved["status"], moved["progress"]) == ("completed", 100)
    after = server(api_url, ADMIN, s["id"])
    assert (after["host"], after["status"]) == (other, "SHUTOFF")

    view = parse(mc("--json", "host", "drain", other, "--wait"))
    assert view["moving"] == [] and view["refused"] == []
    drained = parse(mc("--json", "host", "drain", other))
    assert (drained["state"], drained["servers_left"]) == ("drained", 0)
    assert server(api_url, ADMIN, s["id"])["host"] == first
    assert mc("host", "delete", other).exit_code == 0


def test_live_migrate_with_wait_reports_the_failed_copy(
        mc: Mc, api_url: str, tmp_path: Path) -> None:
    zone = unique("az")
    # Both hosts take live migrations; the test driver cannot copy a domain, so the move is
    # reverted and the guest keeps running on its source.
    agents = [start_test_driver_agent(api_url, tmp_path / name, network="none", az=zone,
                                      migration_address="127.0.0.1",
                                      qemu_conf=tmp_path / "no-qemu.conf")
              for name in ("a", "b")]
    try:
        disk = tmp_path / "disk.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"],
                       check=True)
        image = upload_image(api_url, ADMIN, disk.read_bytes(), "qcow2")["id"]
        s = create_server(api_url, ADMIN, "tiny", image, availability_zone=zone)
        wait_status(api_url, ADMIN, s["id"], "ACTIVE")
        first = server(api_url, ADMIN, s["id"])["host"]

        failed = mc("server", "migrate", s["id"], "--live", "--wait")
        assert failed.exit_code != 0
        assert "reverted" in failed.output and "source host failed" in failed.output
        after = server(api_url, ADMIN, s["id"])
        assert (after["host"], after["status"], after["fault"]["code"]) == (
            first, "ACTIVE", "migration_failed")
        aborted = mc("server", "migrate-abort", s["id"])
        assert aborted.exit_code != 0 and "migration_not_abortable" in aborted.output

        action(api_url, ADMIN, s["id"], "stop")
        wait_status(api_url, ADMIN, s["id"], "SHUTOFF")
        refused = mc("server", "migrate", s["id"], "--live")
        assert refused.exit_code != 0 and "invalid_state" in refused.output
    finally:
        for a in agents:
            a.stop()
