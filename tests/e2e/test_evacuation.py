"""Evacuation end to end: real API and agent processes over HTTP.

One host's agent is killed with SIGKILL; once the API (short monitor settings) calls the host
down, an admin evacuates it and its servers come up on the other host, ACTIVE and SHUTOFF as
they were. The dead host then comes back with its old libvirt state: its agent destroys and
undefines the old domains and deletes their files before it reports anything, and never starts
them.

* libvirt's test driver: the restarted agent's node file holds the old domains, running (as a
  libvirtd that outlived its agent would hold them).
* real QEMU (``qemu`` mark): two libvirt daemons (``tests/e2e/libvirt_hosts.py``); the dead one
  loses its QEMU processes and libvirtd too, and comes back with its domain defined, shut off.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import libvirt
import pytest

from api.config import Settings
from compute_agent.client import AgentClient
from compute_agent.domain_xml import build_domain_xml
from compute_agent.hypervisor import write_test_node_xml
from compute_agent.imagecache import ImageCache
from compute_agent.spec import InstancePaths, ServerSpec
from tests.e2e.guest_image import upload_tiny_guest
from tests.e2e.libvirt_hosts import LibvirtHost
from tests.e2e.stack import (
    ADMIN,
    REPO,
    AgentProcess,
    action,
    create_server,
    enrollment_token,
    host,
    host_id_of,
    server,
    upload_image,
    wait_status,
    wait_until,
)
from tests.factories import make_account, unique

BOOT_WAIT = 180.0
DOWN_AFTER = 4  # seconds without a heartbeat before the API calls a host down
# The API evacuates the hosts of this zone (only) by itself, 2 s after they went down.
AUTO_ZONE = unique("auto-evac")
AUTO_GRACE = 2


class ShortMonitorApi:
    """One ``minicloud-api`` process whose host monitor calls a host down after seconds."""

    def __init__(self, settings: Settings, port: int) -> None:
        self.url = f"http://127.0.0.1:{port}"
        env = dict(os.environ, MINICLOUD_DATABASE_URL=settings.effective_database_url,
                   MINICLOUD_DATA_DIR=str(settings.data_dir), MINICLOUD_LOG_LEVEL="WARNING",
                   MINICLOUD_HOST_DOWN_AFTER_SECONDS=str(DOWN_AFTER),
                   MINICLOUD_HEARTBEAT_INTERVAL_SECONDS="1", PYTHONPATH=str(REPO),
                   MINICLOUD_AUTO_EVACUATE_AFTER_SECONDS=json.dumps({AUTO_ZONE: AUTO_GRACE}))
        out = open(Path(settings.data_dir) / f"api-{port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from api.server import run; run()", "--host", "127.0.0.1",
             "--port", str(port), "--no-migrate"], env=env, stdout=out,
            stderr=subprocess.STDOUT, cwd=REPO)
        out.close()

        def healthy() -> bool:
            assert self.proc.poll() is None, "API exited"
            try:
                return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False
        wait_until(healthy, 60, "API up")

    def stop(self) -> None:
        self.proc.terminate()
        self.proc.wait(20)


@pytest.fixture(scope="module")
def api(settings: Settings, client: Any) -> Iterator[str]:
    import socket
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    process = ShortMonitorApi(settings, port)
    yield process.url
    process.stop()


def _agent(api: str, home: Path, zone: str) -> AgentProcess:
    home.mkdir(parents=True, exist_ok=True)
    uri = write_test_node_xml(home / "node.xml", 4, 8192, network=None)
    return AgentProcess(api, home, unique("evac-host"), uri, az=zone,
                        extra_args=["--network", "none", "--disk-gb", "100"])


def _wait_host(api: str, host_id: str, state: str) -> dict[str, Any]:
    return wait_until(lambda: (h := host(api, host_id))["state"] == state and h,
                      120, f"host {host_id} {state}")


def _keep_old_domains(api: str, home: Path) -> list[str]:
    """Put the domains the host's agent had defined into its test-driver node file, so the
    restarted agent finds them (running) as a surviving libvirtd would hold them.

    They are built the way the agent built them, from what the API handed that agent (read
    now with its credential, which the fence gate refuses: so read before the evacuation).
    """
    cred = json.loads((home / "state" / "credential.json").read_text())
    with AgentClient(api, cred["credential"]) as agent_api:
        desired = agent_api.desired_servers().servers
    node = ET.parse(home / "node.xml").getroot()
    cache = ImageCache(home / "images")
    for d in desired:
        image = cache.use(d.image.id)
        assert image is not None, "the agent cached the image"
        spec = ServerSpec(
            server_id=d.server_id, project_id=d.project_id, name=d.name, hostname=d.hostname,
            vcpus=d.flavor.vcpus, ram_mb=d.flavor.ram_mb, disk_gb=d.flavor.disk_gb,
            image_path=image, image_id=d.image.id, user_data=d.user_data, virt_type="qemu",
            host_id=cred["host_id"])
        node.append(ET.fromstring(build_domain_xml(spec, InstancePaths(home / "instances",
                                                                        d.server_id))))
    (home / "node.xml").write_text(ET.tostring(node, encoding="unicode"))
    return [d.server_id for d in desired]


def test_a_killed_host_is_evacuated_and_fenced_when_it_comes_back(
    api: str, client: Any, tmp_path: Path
) -> None:
    zone = unique("evac")
    member = make_account(client, ADMIN)
    r = httpx.post(f"{api}/v1/flavors", headers=ADMIN, json={
        "name": unique("evac"), "vcpus": 1, "ram_mb": 256, "disk_gb": 1})
    assert r.status_code == 201, r.text
    flavor = r.json()["name"]
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    image = upload_image(api, member.headers, disk.read_bytes(), "qcow2")["id"]

    dead = _agent(api, tmp_path / "dead", zone)
    survivor = _agent(api, tmp_path / "survivor", zone)
    try:
        dead.start(enrollment_token(api))
        dead_id = wait_until(lambda: (tmp_path / "dead/state/credential.json").exists()
                             and host_id_of(tmp_path / "dead"), 60, "enrolled")
        _wait_host(api, dead_id, "up")
        running = create_server(api, member.headers, flavor, image, availability_zone=zone,
                                user_data="#cloud-config\nhostname: kept\n")["id"]
        stopped = create_server(api, member.headers, flavor, image,
                                availability_zone=zone)["id"]
        wait_status(api, member.headers, running, "ACTIVE")
        wait_status(api, member.headers, stopped, "ACTIVE")
        action(api, member.headers, stopped, "stop")
        wait_status(api, member.headers, stopped, "SHUTOFF")
        survivor.start(enrollment_token(api))
        survivor_id = wait_until(lambda: (tmp_path / "survivor/state/credential.json").exists()
                                 and host_id_of(tmp_path / "survivor"), 60, "enrolled")
        _wait_host(api, survivor_id, "up")

        # The host dies: its agent is killed, nothing is cleaned up.
        old = _keep_old_domains(api, tmp_path / "dead")
        assert sorted(old) == sorted([running, stopped])
        dead.kill()
        r = httpx.post(f"{api}/v1/hosts/{dead_id}/evacuate", headers=ADMIN)
        if r.status_code == 409:  # not down yet: the monitor needs DOWN_AFTER seconds
            assert r.json()["code"] == "host_not_down"
        _wait_host(api, dead_id, "down")
        r = httpx.post(f"{api}/v1/hosts/{dead_id}/evacuate", headers=ADMIN)
        assert r.status_code == 202, r.text
        assert {s["server_id"]: (s["result"], s["target_host_id"])
                for s in r.json()["servers"]} == {
            running: ("rebuilding", survivor_id), stopped: ("rebuilding", survivor_id)}

        # Rebuilt on the survivor, in the power state they had; nothing left on the dead host.
        assert wait_status(api, ADMIN, running, "ACTIVE")["host"] == survivor.name
        assert wait_status(api, ADMIN, stopped, "SHUTOFF")["host"] == survivor.name
        dead_view = host(api, dead_id)
        assert {rc: r["allocated"] for rc, r in dead_view["resources"].items()} == {
            "VCPU": 0, "MEMORY_MB": 0, "DISK_GB": 0}
        assert host(api, survivor_id)["resources"]["VCPU"]["allocated"] == 2
        assert (dead_view["evacuation"]["done"], dead_view["evacuation"]["fencing_pending"]) \
            == (2, 2)

        # The dead host comes back with its old domains running: its agent fences them first.
        for sid in old:
            assert (tmp_path / "dead" / "instances" / sid).exists()
        log_before = (tmp_path / "dead" / "agent.log").stat().st_size
        dead.start()
        _wait_host(api, dead_id, "up")
        for sid in old:
            fence = [e for e in httpx.get(f"{api}/v1/servers/{sid}/events",
                                          headers=ADMIN).json()["events"]
                     if e["action"] == "fence"]
            assert [(e["details"]["domain"], e["details"]["host_id"]) for e in fence] == [
                ("destroyed", dead_id)]
            assert not (tmp_path / "dead" / "instances" / sid).exists()
        restarted = (tmp_path / "dead" / "agent.log").read_bytes()[log_before:].decode()
        for sid in old:
            assert f"fenced evacuated server {sid}: domain destroyed" in restarted
            assert f"start {sid}" not in restarted and f"build {sid}" not in restarted
        assert host(api, dead_id)["evacuation"]["fencing_pending"] == 0
        # The servers stay where they were rebuilt, as they were.
        assert (server(api, ADMIN, running)["status"], server(api, ADMIN, running)["host"]) \
            == ("ACTIVE", survivor.name)
        assert server(api, ADMIN, stopped)["status"] == "SHUTOFF"
        assert httpx.get(f"{api}/v1/servers", headers=ADMIN,
                         params={"host": dead.name}).json()["servers"] == []
    finally:
        dead.stop()
        survivor.stop()
        # Shown by pytest only when the test failed.
        print("dead host's agent:\n", dead.output(), "\nsurvivor's agent:\n", survivor.output())


def test_a_host_down_beyond_its_zone_grace_is_evacuated_without_an_admin(
    api: str, client: Any, tmp_path: Path
) -> None:
    member = make_account(client, ADMIN)
    r = httpx.post(f"{api}/v1/flavors", headers=ADMIN, json={
        "name": unique("evac"), "vcpus": 1, "ram_mb": 256, "disk_gb": 1})
    assert r.status_code == 201, r.text
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    image = upload_image(api, member.headers, disk.read_bytes(), "qcow2")["id"]
    dead = _agent(api, tmp_path / "dead", AUTO_ZONE)
    survivor = _agent(api, tmp_path / "survivor", AUTO_ZONE)
    try:
        dead.start(enrollment_token(api))
        dead_id = wait_until(lambda: (tmp_path / "dead/state/credential.json").exists()
                             and host_id_of(tmp_path / "dead"), 60, "enrolled")
        _wait_host(api, dead_id, "up")
        sid = create_server(api, member.headers, r.json()["name"], image,
                            availability_zone=AUTO_ZONE)["id"]
        wait_status(api, member.headers, sid, "ACTIVE")
        survivor.start(enrollment_token(api))
        survivor_id = wait_until(lambda: (tmp_path / "survivor/state/credential.json").exists()
                                 and host_id_of(tmp_path / "survivor"), 60, "enrolled")
        _wait_host(api, survivor_id, "up")

        dead.kill()
        # Nobody calls evacuate: the host monitor does, once the host is down for its grace.
        wait_until(lambda: (s := server(api, ADMIN, sid))["host"] == survivor.name
                   and s["status"] == "ACTIVE" and s["task_state"] is None, 120,
                   "the server rebuilt on the survivor")
        progress = host(api, dead_id)["evacuation"]
        assert (progress["automatic"], progress["done"], progress["fencing_pending"]) == (
            True, 1, 1)
        evacuate = [e for e in httpx.get(f"{api}/v1/servers/{sid}/events",
                                         headers=member.headers).json()["events"]
                    if e["action"] == "evacuate"]
        assert [(e["user_id"], e["details"]["automatic"]) for e in evacuate] == [(None, True)]
    finally:
        dead.stop()
        survivor.stop()
        print("dead host's agent:\n", dead.output(), "\nsurvivor's agent:\n", survivor.output())


# ------------------------------------------------------------------ real QEMU, two libvirtds

def _domain(host: LibvirtHost, server_id: str) -> tuple[bool, int] | None:
    """(running, autostart) of the server's domain on ``host``'s libvirtd; None: not defined."""
    conn = libvirt.open(host.uri)
    try:
        dom = conn.lookupByUUIDString(server_id)
        return bool(dom.isActive()), int(dom.autostart())
    except libvirt.libvirtError:
        return None
    finally:
        conn.close()


@pytest.mark.qemu
@pytest.mark.slow
def test_a_dead_qemu_host_is_evacuated_and_its_old_domain_is_never_started(
    api: str, client: Any, two_libvirt_hosts: list[LibvirtHost]
) -> None:
    a, b = two_libvirt_hosts
    zone = unique("evac-qemu")
    member = make_account(client, ADMIN)
    disk_id = upload_tiny_guest(api, member.headers).disk_id
    agents = {h.name: AgentProcess(api, h.data_dir, unique(f"evac-{h.name}"), h.uri, az=zone,
                                   extra_args=["--network", "none"]) for h in (a, b)}
    dead, survivor = agents[a.name], agents[b.name]
    sid = None
    try:
        dead.start(enrollment_token(api))
        dead_id = wait_until(lambda: (a.data_dir / "state/credential.json").exists()
                             and host_id_of(a.data_dir), 60, "enrolled")
        _wait_host(api, dead_id, "up")
        sid = create_server(api, member.headers, "tiny", disk_id, name="evac-guest",
                            availability_zone=zone)["id"]
        wait_status(api, member.headers, sid, "ACTIVE", BOOT_WAIT)
        hostname_line = f"minicloud-guest: hostname=evac-guest instance-id={sid}"
        wait_until(lambda: hostname_line in (a.instances_dir / sid / "console.log").read_text(
            errors="replace"), BOOT_WAIT, "hostname on A's console")
        survivor.start(enrollment_token(api))
        survivor_id = wait_until(lambda: (b.data_dir / "state/credential.json").exists()
                                 and host_id_of(b.data_dir), 60, "enrolled")
        _wait_host(api, survivor_id, "up")

        # Host A dies: kill -9 of its QEMU, libvirtd and agent.
        dead.kill()
        a.kill()
        assert a.qemu_pids() == []
        _wait_host(api, dead_id, "down")
        r = httpx.post(f"{api}/v1/hosts/{dead_id}/evacuate", headers=ADMIN)
        assert r.status_code == 202, r.text
        assert [(s["server_id"], s["target_host_id"]) for s in r.json()["servers"]] == [
            (sid, survivor_id)]

        # ACTIVE on B, booted afresh there: B's console shows the hostname.
        assert wait_status(api, member.headers, sid, "ACTIVE", BOOT_WAIT)
        assert server(api, ADMIN, sid)["host"] == survivor.name
        wait_until(lambda: hostname_line in (b.instances_dir / sid / "console.log").read_text(
            errors="replace") if (b.instances_dir / sid / "console.log").exists() else False,
            BOOT_WAIT, "hostname on B's console")
        wait_until(lambda: hostname_line in httpx.get(
            f"{api}/v1/servers/{sid}/console", headers=member.headers).json()["output"],
            BOOT_WAIT, "hostname on the API console")
        assert _domain(b, sid) == (True, 0)

        # A's libvirtd comes back (after a reboot): the old domain is defined, shut off, and
        # not autostart, so nothing starts it before the agent fences it.
        a.restart(reboot=True)
        assert _domain(a, sid) == (False, 0)
        dead.start()
        _wait_host(api, dead_id, "up")
        assert _domain(a, sid) is None  # destroyed and undefined
        assert not (a.instances_dir / sid).exists()
        assert a.qemu_pids() == []  # never started on A
        fence = [e for e in httpx.get(f"{api}/v1/servers/{sid}/events",
                                      headers=ADMIN).json()["events"] if e["action"] == "fence"]
        assert [e["details"]["domain"] for e in fence] == ["undefined"]
        # It runs exactly once, on B, and stays there.
        assert _domain(b, sid) == (True, 0)
        assert server(api, ADMIN, sid)["status"] == "ACTIVE"
        assert server(api, ADMIN, sid)["host"] == survivor.name
        assert host(api, dead_id)["evacuation"]["fencing_pending"] == 0
        assert dead.alive(), dead.output()
    finally:
        if sid is not None:
            httpx.delete(f"{api}/v1/servers/{sid}", headers=member.headers)
        dead.stop()
        survivor.stop()
        # Shown by pytest only when the test failed.
        print("dead host's agent:\n", dead.output(), "\nsurvivor's agent:\n", survivor.output())
