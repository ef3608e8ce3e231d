"""Cold migration between two real agents on libvirt test-driver nodes, through a real API
process: the disk overlay and seed go through the API's relay, the server ends on the other
host as it was (ACTIVE or SHUTOFF) with its disk content, the source keeps nothing, and the
allocations are only on the destination. A corrupt relayed disk reverts the move.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.config import Settings
from compute_agent.spec import InstancePaths
from tests.e2e.stack import (
    ADMIN,
    WAIT,
    ThreadAgent,
    action,
    allocated,
    create_server,
    server,
    start_test_driver_agent,
    wait_status,
    wait_until,
)
from tests.e2e.two_hosts import restart_agent, wait_active_on
from tests.factories import Account, unique

pytestmark = [pytest.mark.libvirt]

PATTERN = "0x5a"


@pytest.fixture
def pair(api: str, tmp_path: Path) -> Iterator[list[ThreadAgent]]:
    zone = unique("az")
    agents = [start_test_driver_agent(api, tmp_path / name, network="none", az=zone)
              for name in ("a", "b")]
    yield agents
    for a in agents:
        a.stop()


def write_pattern(disk: Path) -> None:
    """Write 64 KiB of a pattern into the guest's disk (the overlay), as a guest would."""
    subprocess.run(["qemu-io", "-f", "qcow2", "-c", f"write -P {PATTERN} 1M 64k", str(disk)],
                   check=True, capture_output=True)


def has_pattern(disk: Path) -> bool:
    done = subprocess.run(["qemu-io", "-f", "qcow2", "-r", "-c",
                           f"read -P {PATTERN} 1M 64k", str(disk)],
                          capture_output=True, text=True, check=False)
    return done.returncode == 0 and "Pattern verification failed" not in done.stdout


def migrations(api: str, headers: dict[str, str], sid: str) -> list[dict[str, Any]]:
    r = httpx.get(f"{api}/v1/servers/{sid}/migrations", headers=headers)
    assert r.status_code == 200, r.text
    found: list[dict[str, Any]] = r.json()["migrations"]
    return found


def boot_on(api: str, member: Account, image: str, pair: list[ThreadAgent],
            status: str) -> dict[str, Any]:
    s = create_server(api, member.headers, "tiny", image, availability_zone=pair[0].az)
    wait_status(api, member.headers, s["id"], "ACTIVE")
    if status == "SHUTOFF":
        action(api, member.headers, s["id"], "stop")
        wait_status(api, member.headers, s["id"], "SHUTOFF")
    return server(api, ADMIN, s["id"])


@pytest.mark.parametrize("status", ["SHUTOFF", "ACTIVE"])
def test_cold_migration_moves_the_server_with_its_disk(
        api: str, member: Account, image_id: str, pair: list[ThreadAgent], status: str) -> None:
    s = boot_on(api, member, image_id, pair, status)
    sid = s["id"]
    source, dest = pair if s["host"] == pair[0].name else pair[::-1]
    src_paths = InstancePaths(source.agent.instances, sid)
    write_pattern(src_paths.disk)
    sizes = allocated(api, source.host_id)
    assert sizes == {"VCPU": 1, "MEMORY_MB": 512, "DISK_GB": 1}

    action(api, member.headers, sid, "migrate")

    moved = wait_until(lambda: (x := server(api, ADMIN, sid))["host"] == dest.name
                       and x["status"] == status and x["task_state"] is None and x, WAIT,
                       f"server {status} on {dest.name}")
    assert moved["fault"] is None
    # A tenant sees where it is not: only that it moved.
    assert server(api, member.headers, sid)["host"] is None
    dst_paths = InstancePaths(dest.agent.instances, sid)
    assert has_pattern(dst_paths.disk)
    assert dest.agent.hv.list_managed()[sid].observed == (
        "running" if status == "ACTIVE" else "shutoff")
    # The source removes its copy once the server is no longer listed there.
    wait_until(lambda: sid not in source.agent.hv.list_managed()
               and not src_paths.directory.exists(), WAIT, "source copy removed")
    assert allocated(api, source.host_id) == {"VCPU": 0, "MEMORY_MB": 0, "DISK_GB": 0}
    assert allocated(api, dest.host_id) == sizes
    [m] = migrations(api, ADMIN, sid)
    assert (m["kind"], m["status"], m["progress"], m["fault"]) == ("cold", "completed", 100, None)
    assert (m["source_host_id"], m["dest_host_id"]) == (source.host_id, dest.host_id)
    [seen] = migrations(api, member.headers, sid)
    assert seen["source_host_id"] is None and seen["dest_host_id"] is None
    events = httpx.get(f"{api}/v1/servers/{sid}/events", headers=member.headers).json()["events"]
    moves = [(e["action"], e["result"]) for e in events if e["action"] == "migrate"]
    assert moves == [("migrate", "accepted"), ("migrate", "success"), ("migrate", "success")]
    # Billed once, per server: the cold move's stop and start bill as a user's would.
    r = httpx.get(f"{api}/v1/usage/servers/{sid}", headers=member.headers,
                  params={"start": "2000-01-01T00:00:00Z", "end": "2100-01-01T00:00:00Z"})
    assert r.status_code == 200, r.text
    kinds = [(e["kind"], e["source"]) for e in r.json()["entries"]]
    expected = [("created", "api"), ("running", "agent"), ("stopped", "agent")]
    if status == "ACTIVE":
        expected.append(("running", "agent"))  # the destination's start
    assert kinds == expected


def restart(old: ThreadAgent) -> ThreadAgent:
    """The same host's agent started again (a fresh test-driver node: nothing defined)."""
    return restart_agent(old)


def test_a_corrupt_relayed_disk_reverts_the_move_to_the_source(
        api: str, member: Account, image_id: str, pair: list[ThreadAgent],
        settings: Settings) -> None:
    s = boot_on(api, member, image_id, pair, "ACTIVE")
    sid = s["id"]
    source, dest = pair if s["host"] == pair[0].name else pair[::-1]
    dest.stop()  # the destination waits while the test spoils the relayed disk
    r = httpx.post(f"{api}/v1/servers/{sid}/actions", headers=ADMIN,
                   json={"action": "migrate", "host": dest.name})
    assert r.status_code == 202, r.text
    m = wait_until(lambda: (x := migrations(api, ADMIN, sid)[0])["status"] == "migrating"
                   and x, WAIT, "the source's files in the relay")
    relayed = Path(settings.data_dir) / "migrations" / m["id"] / "disk"
    with open(relayed, "ab") as f:
        f.write(b"spoilt")
    assert allocated(api, dest.host_id) == {"VCPU": 1, "MEMORY_MB": 512, "DISK_GB": 1}
    revived = restart(dest)
    pair[pair.index(dest)] = revived
    back = wait_until(lambda: (x := server(api, ADMIN, sid))["fault"] is not None
                      and x["status"] == "ACTIVE" and x["task_state"] is None and x, WAIT,
                      "server back on its source")
    assert back["host"] == source.name
    assert back["fault"]["code"] == "migration_failed"
    assert "destination" in back["fault"]["message"]
    [m] = migrations(api, ADMIN, sid)
    assert m["status"] == "reverted" and m["fault"]["code"] == "migration_failed"
    assert source.agent.hv.list_managed()[sid].observed == "running"
    wait_until(lambda: sid not in revived.agent.hv.list_managed()
               and not InstancePaths(revived.agent.instances, sid).directory.exists(),
               WAIT, "the destination's copy removed")
    assert allocated(api, dest.host_id) == {"VCPU": 0, "MEMORY_MB": 0, "DISK_GB": 0}
    assert allocated(api, source.host_id) == {"VCPU": 1, "MEMORY_MB": 512, "DISK_GB": 1}
    assert not relayed.parent.exists()


@pytest.mark.parametrize("side", ["source", "destination"])
def test_an_agent_restarting_in_the_middle_of_the_move_finishes_it(
        api: str, member: Account, image_id: str, pair: list[ThreadAgent], side: str) -> None:
    s = boot_on(api, member, image_id, pair, "ACTIVE")
    sid = s["id"]
    source, dest = pair if s["host"] == pair[0].name else pair[::-1]
    write_pattern(InstancePaths(source.agent.instances, sid).disk)
    down = source if side == "source" else dest
    down.stop()  # (its libvirt node and files stay; a test-driver node forgets its domains)
    r = httpx.post(f"{api}/v1/servers/{sid}/actions", headers=ADMIN,
                   json={"action": "migrate", "host": dest.name})
    assert r.status_code == 202, r.text
    step = "preparing" if side == "source" else "migrating"
    if side == "destination":
        wait_until(lambda: migrations(api, ADMIN, sid)[0]["status"] == step, WAIT,
                   "the source's step done")
    assert migrations(api, ADMIN, sid)[0]["status"] == step
    revived = restart(down)
    pair[pair.index(down)] = revived
    source, dest = (revived, dest) if side == "source" else (source, revived)
    moved = wait_active_on(api, sid, dest.name)
    assert moved["fault"] is None
    assert has_pattern(InstancePaths(dest.agent.instances, sid).disk)
    wait_until(lambda: sid not in source.agent.hv.list_managed()
               and not InstancePaths(source.agent.instances, sid).directory.exists(), WAIT,
               "source copy removed")
    assert allocated(api, source.host_id) == {"VCPU": 0, "MEMORY_MB": 0, "DISK_GB": 0}
    [m] = migrations(api, ADMIN, sid)
    assert m["status"] == "completed"
