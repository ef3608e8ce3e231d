"""A real agent (thread) on the libvirt test driver against a real API process.

Covers the server lifecycle through the agent (build, stop, start, reboot, pause, unpause,
stop and delete of a paused server, delete with allocations freed), inventory and heartbeats,
addresses from the test driver's leases, a checksum mismatch becoming ERROR, and leftovers
(unwanted domains, orphan directories) removed while a foreign domain is never touched.
"""

from __future__ import annotations

import hashlib
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.config import Settings
from compute_agent.domain_xml import parse_metadata
from compute_agent.imagecache import backing_file
from compute_agent.spec import InstancePaths
from tests.e2e.stack import (
    ADMIN,
    WAIT,
    ThreadAgent,
    action,
    allocated,
    assert_placed_on,
    create_server,
    host,
    start_test_driver_agent,
    upload_image,
    wait_gone,
    wait_status,
    wait_until,
)
from tests.factories import Account, make_account, unique

pytestmark = [pytest.mark.libvirt]


@pytest.fixture(scope="module")
def api(shared_api: str) -> str:
    return shared_api


@pytest.fixture(scope="module")
def member(api: str) -> Account:
    with httpx.Client(base_url=api) as c:
        return make_account(c, ADMIN)


@pytest.fixture(scope="module")
def disk_image(tmp_path_factory: pytest.TempPathFactory) -> bytes:
    path = tmp_path_factory.mktemp("img") / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
    return path.read_bytes()


@pytest.fixture
def agent(api: str, tmp_path: Path) -> Iterator[ThreadAgent]:
    a = start_test_driver_agent(api, tmp_path / "host", vcpus=4, ram_mb=8192, disk_gb=50,
                                az=unique("az"))
    yield a
    a.stop()


def boot(api: str, member: Account, image_id: str, agent: ThreadAgent,
         **fields: Any) -> dict[str, Any]:
    s = create_server(api, member.headers, "tiny", image_id, availability_zone=agent.az,
                      **fields)
    assert_placed_on(api, s["id"], agent.name)
    return s


def test_inventory_and_heartbeat_reach_the_api(api: str, agent: ThreadAgent) -> None:
    h = wait_until(lambda: (x := host(api, agent.host_id))["resources"] and x, WAIT, "inventory")
    assert {rc: r["total"] for rc, r in h["resources"].items()} == \
        {"VCPU": 4, "MEMORY_MB": 8192, "DISK_GB": 50}
    wait_until(lambda: host(api, agent.host_id)["state"] == "up", WAIT, "host up")


def test_server_lifecycle_through_the_agent(api: str, member: Account, disk_image: bytes,
                                            agent: ThreadAgent) -> None:
    image = upload_image(api, member.headers, disk_image, "qcow2")
    hostile = "web <1> & '../x\" ]]>"
    s = boot(api, member, image["id"], agent, name=hostile)
    sid = s["id"]
    active = wait_status(api, member.headers, sid, "ACTIVE")
    hv, paths = agent.agent.hv, InstancePaths(agent.agent.instances, sid)
    assert hv.list_managed()[sid].observed == "running"
    assert paths.disk.exists() and paths.seed.exists()
    # The name is data in the domain XML, and paths come from the UUID only.
    meta = parse_metadata(hv.domain_xml(sid))
    assert meta is not None and meta.name == hostile
    assert list(agent.agent.instances.iterdir()) == [paths.directory]
    # The test driver hands out a fake DHCP lease on the "default" network.
    ips = wait_until(lambda: server(api, member, sid)["addresses"], WAIT, "addresses")
    assert ips[0]["ip"].startswith("192.168.122."), active

    action(api, member.headers, sid, "stop")
    wait_status(api, member.headers, sid, "SHUTOFF")
    assert hv.list_managed()[sid].observed == "shutoff"

    action(api, member.headers, sid, "start")
    wait_status(api, member.headers, sid, "ACTIVE")
    assert hv.list_managed()[sid].observed == "running"

    for kind in ("soft", "hard"):
        action(api, member.headers, sid, "reboot", type=kind)
        wait_status(api, member.headers, sid, "ACTIVE")
        assert hv.list_managed()[sid].observed == "running"

    # Pause freezes the domain (memory kept: still allocated), unpause lets it run again.
    action(api, member.headers, sid, "pause")
    wait_status(api, member.headers, sid, "PAUSED")
    assert hv.list_managed()[sid].observed == "paused"
    assert allocated(api, agent.host_id) == {"VCPU": 1, "MEMORY_MB": 512, "DISK_GB": 1}
    action(api, member.headers, sid, "unpause")
    wait_status(api, member.headers, sid, "ACTIVE")
    assert hv.list_managed()[sid].observed == "running"
    # Stop from PAUSED: the frozen guest is powered off at once.
    action(api, member.headers, sid, "pause")
    wait_status(api, member.headers, sid, "PAUSED")
    action(api, member.headers, sid, "stop")
    wait_status(api, member.headers, sid, "SHUTOFF")
    assert hv.list_managed()[sid].observed == "shutoff"
    action(api, member.headers, sid, "start")
    wait_status(api, member.headers, sid, "ACTIVE")
    # Delete from PAUSED.
    action(api, member.headers, sid, "pause")
    wait_status(api, member.headers, sid, "PAUSED")

    assert allocated(api, agent.host_id) == {"VCPU": 1, "MEMORY_MB": 512, "DISK_GB": 1}
    r = httpx.delete(f"{api}/v1/servers/{sid}", headers=member.headers)
    assert r.status_code == 202, r.text
    wait_gone(api, member.headers, sid)
    assert sid not in hv.list_managed()
    assert not paths.directory.exists()
    assert allocated(api, agent.host_id) == {"VCPU": 0, "MEMORY_MB": 0, "DISK_GB": 0}
    # The base image stays cached for the next server.
    assert agent.agent.cache.has(image["id"])


def server(api: str, member: Account, sid: str) -> dict[str, Any]:
    body: dict[str, Any] = httpx.get(f"{api}/v1/servers/{sid}", headers=member.headers).json()
    return body


def test_image_checksum_mismatch_puts_the_server_in_error(
        api: str, member: Account, disk_image: bytes, settings: Settings,
        agent: ThreadAgent) -> None:
    image = upload_image(api, member.headers, disk_image, "qcow2")
    # Corrupt the API's stored copy: the bytes the agent downloads no longer match the sha256
    # recorded at upload.
    stored = settings.image_dir / image["id"]
    stored.write_bytes(stored.read_bytes()[:-1] + b"\x01")
    s = boot(api, member, image["id"], agent)
    err = wait_status(api, member.headers, s["id"], "ERROR")
    assert err["fault"]["code"] == "spawn_failed"
    assert "sha256" in err["fault"]["message"]
    assert s["id"] not in agent.agent.hv.list_managed()
    assert not agent.agent.cache.has(image["id"])
    # Deleting the failed server frees what it held.
    assert httpx.delete(f"{api}/v1/servers/{s['id']}", headers=member.headers).status_code == 202
    wait_gone(api, member.headers, s["id"])
    assert not InstancePaths(agent.agent.instances, s["id"]).exists()


def test_leftovers_are_removed_and_foreign_domains_kept(
        api: str, agent: ThreadAgent) -> None:
    a = agent.agent
    wait_until(lambda: a.passes > 0, WAIT, "first pass")
    # A directory of no server and no domain (e.g. a build interrupted before define).
    orphan = InstancePaths(a.instances, str(uuid.uuid4()))
    orphan.create()
    (orphan.directory / "disk.qcow2").write_bytes(b"x")
    # A domain nobody in minicloud created, on the same connection.
    conn: Any = a.hv._conn
    foreign_uuid = str(uuid.uuid4())
    conn.defineXML(
        f"<domain type='test'><name>foreign-{hashlib.md5(foreign_uuid.encode()).hexdigest()}"
        f"</name><uuid>{foreign_uuid}</uuid><memory>1024</memory>"
        "<os><type>hvm</type></os></domain>")
    # Nudge a pass by asking for one (level-triggered: the next pass sees the leftovers).
    wait_until(lambda: not orphan.exists(), WAIT, "orphan directory removed")
    assert conn.lookupByUUIDString(foreign_uuid) is not None
    conn.lookupByUUIDString(foreign_uuid).undefine()


def test_another_hosts_domains_are_quarantined_not_destroyed(
        api: str, agent: ThreadAgent) -> None:
    a = agent.agent
    wait_until(lambda: a.passes > 0, WAIT, "first pass")
    # A minicloud domain (and its files) that another host's agent defined on this libvirt,
    # e.g. the same machine enrolled before under another name.
    sid, other_host = str(uuid.uuid4()), str(uuid.uuid4())
    files = InstancePaths(a.instances, sid)
    files.create()
    (files.directory / "disk.qcow2").write_bytes(b"x")
    conn: Any = a.hv._conn
    conn.defineXML(
        f"<domain type='test'><name>instance-{sid}</name><uuid>{sid}</uuid>"
        "<memory>1024</memory><os><type>hvm</type></os><metadata>"
        "<minicloud:instance xmlns:minicloud='https://minicloud.dev/xmlns/domain/1.0'>"
        f"<minicloud:server id='{sid}'/><minicloud:project id='{uuid.uuid4()}'/>"
        f"<minicloud:name>theirs</minicloud:name><minicloud:host id='{other_host}'/>"
        "</minicloud:instance></metadata></domain>")
    passes = a.passes
    wait_until(lambda: a.passes >= passes + 2, WAIT, "two more passes")
    dom = conn.lookupByUUIDString(sid)
    assert dom is not None and not dom.isActive()  # neither destroyed nor started
    assert files.exists()
    assert a.foreign == {sid: other_host}
    # The heartbeat reports it; admins see it on the host.
    wait_until(lambda: host(api, agent.host_id)["foreign_domains"], WAIT, "foreign reported")
    assert host(api, agent.host_id)["foreign_domains"] == [
        {"server_id": sid, "host_id": other_host}]
    dom.undefine()
    files.remove()


def test_raw_images_boot_too(api: str, member: Account, agent: ThreadAgent,
                             tmp_path: Path) -> None:
    raw = tmp_path / "disk.raw"
    subprocess.run(["qemu-img", "create", "-q", "-f", "raw", str(raw), "8M"], check=True)
    image = upload_image(api, member.headers, raw.read_bytes(), "raw")
    s = boot(api, member, image["id"], agent)
    wait_status(api, member.headers, s["id"], "ACTIVE")
    overlay = InstancePaths(agent.agent.instances, s["id"]).disk
    assert backing_file(overlay) == (str(agent.agent.cache.path(image["id"])), "raw")
    assert httpx.delete(f"{api}/v1/servers/{s['id']}", headers=member.headers).status_code == 202
    wait_gone(api, member.headers, s["id"])


def test_resize_is_applied_by_the_agent_before_the_task_clears(
        api: str, member: Account, disk_image: bytes, agent: ThreadAgent) -> None:
    image = upload_image(api, member.headers, disk_image, "qcow2")
    sid = boot(api, member, image["id"], agent)["id"]
    wait_status(api, member.headers, sid, "ACTIVE")
    action(api, member.headers, sid, "stop")
    wait_status(api, member.headers, sid, "SHUTOFF")

    r = httpx.post(f"{api}/v1/servers/{sid}/actions", headers=member.headers,
                   json={"action": "resize", "flavor": "small"})
    assert r.status_code == 202, r.text
    # The agent redefines the shut-off domain, grows the overlay and echoes the resize id;
    # only then does the task clear.
    wait_until(lambda: server(api, member, sid)["task_state"] is None, 30, "resize confirmed")
    shown = server(api, member, sid)
    assert (shown["status"], shown["flavor"]["name"]) == ("SHUTOFF", "small")
    meta = parse_metadata(agent.agent.hv.domain_xml(sid))
    assert meta is not None
    assert (meta.vcpus, meta.ram_mb) == (1, 2048)
    assert allocated(api, agent.host_id) == {"VCPU": 1, "MEMORY_MB": 2048, "DISK_GB": 20}
    action(api, member.headers, sid, "start")
    wait_status(api, member.headers, sid, "ACTIVE")
