"""A real agent (libvirt test driver, real API process) trims its image cache: with a limit of
0 MiB every image no server on the host uses is evicted, and an image in use never is."""

from __future__ import annotations

import subprocess
import threading
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest

from compute_agent.agent import Agent, ensure_enrolled
from compute_agent.hypervisor import Hypervisor, write_test_node_xml
from tests.e2e.stack import (
    ADMIN,
    WAIT,
    ThreadAgent,
    agent_settings,
    assert_placed_on,
    create_server,
    enrollment_token,
    host,
    upload_image,
    wait_gone,
    wait_status,
    wait_until,
)
from tests.factories import make_account, unique

pytestmark = [pytest.mark.libvirt]


def qcow2_bytes(path: Path, size: str) -> bytes:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return path.read_bytes()


def test_unused_images_are_evicted_and_images_in_use_kept(
    live_api: Callable[[int], list[str]], tmp_path: Path
) -> None:
    api = live_api(1)[0]
    with httpx.Client(base_url=api) as c:
        member = make_account(c, ADMIN)
    home, name, az = tmp_path / "host", unique("sim"), unique("az")
    home.mkdir()
    uri = write_test_node_xml(home / "node.xml", 4, 8192)
    settings = agent_settings(api, home, name, uri, disk_gb=50, availability_zone=az,
                              image_cache_max_mb=0)
    cred = ensure_enrolled(settings, "qemu", token=enrollment_token(api))
    agent = Agent(settings, cred, Hypervisor(uri), "qemu")
    thread = threading.Thread(target=agent.run, name=f"agent-{name}", daemon=True)
    thread.start()
    running = ThreadAgent(agent, thread, cred.host_id, name, az)
    try:
        wait_until(lambda: host(api, cred.host_id)["state"] == "up", WAIT, "host up")
        kept = upload_image(api, member.headers, qcow2_bytes(tmp_path / "a", "16M"), "qcow2")
        gone = upload_image(api, member.headers, qcow2_bytes(tmp_path / "b", "8M"), "qcow2")
        servers = []
        for image in (kept, gone):
            s = create_server(api, member.headers, "tiny", image["id"], availability_zone=az)
            assert_placed_on(api, s["id"], name)
            servers.append(s["id"])
        for sid in servers:
            wait_status(api, member.headers, sid, "ACTIVE")
        # Both in use: kept although the cache is far beyond its 0 MiB.
        assert agent.cache.has(kept["id"]) and agent.cache.has(gone["id"])

        r = httpx.delete(f"{api}/v1/servers/{servers[1]}", headers=member.headers)
        assert r.status_code == 202, r.text
        wait_gone(api, member.headers, servers[1])
        wait_until(lambda: not agent.cache.has(gone["id"]), WAIT, "the unused image evicted")
        assert agent.cache.has(kept["id"])
        assert wait_status(api, member.headers, servers[0], "ACTIVE")["status"] == "ACTIVE"
    finally:
        running.stop()
