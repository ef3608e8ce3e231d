"""One server's failure never blocks the others on its host.

A real agent process talks to the API through a real HTTP proxy that answers one image's
download with 502. The other server of the same host still becomes ACTIVE; the failing one
stays in BUILD, named (with the 502) in the host's loop progress, and is retried with backoff
until the download works again.
"""

from __future__ import annotations

import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from compute_agent.hypervisor import write_test_node_xml
from tests.e2e.proxy import FaultyProxy
from tests.e2e.stack import (
    ADMIN,
    WAIT,
    AgentProcess,
    create_server,
    enrollment_token,
    host,
    host_id_of,
    server,
    upload_image,
    wait_gone,
    wait_status,
    wait_until,
)
from tests.factories import make_account, unique

pytestmark = [pytest.mark.libvirt]


def _qcow2(path: Path, size: str) -> bytes:
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), size], check=True)
    return path.read_bytes()


def test_a_failing_image_download_does_not_block_another_server(
        live_api: Callable[[int], list[str]], tmp_path: Path) -> None:
    api = live_api(1)[0]
    with httpx.Client(base_url=api) as c:
        member = make_account(c, ADMIN)
    broken = upload_image(api, member.headers, _qcow2(tmp_path / "a.qcow2", "16M"), "qcow2")
    fine = upload_image(api, member.headers, _qcow2(tmp_path / "b.qcow2", "24M"), "qcow2")
    az = unique("az")
    with FaultyProxy(api, status=502) as proxy:
        proxy.failing.add(f"/v1/images/{broken['id']}/file")
        home = tmp_path / "agent"
        home.mkdir()
        uri = write_test_node_xml(home / "node.xml", 8, 16384, network="default")
        agent = AgentProcess(proxy.url, home, unique("iso"), uri, az=az)
        agent.start(token=enrollment_token(api))
        try:
            host_id = wait_until(lambda: (home / "state" / "credential.json").exists()
                                 and host_id_of(home), WAIT, "enrollment")
            wait_until(lambda: host(api, host_id)["state"] == "up", WAIT, "host up")
            # The failing server first, so it is ahead of the other in every pass.
            a = create_server(api, member.headers, "tiny", broken["id"], availability_zone=az)
            b = create_server(api, member.headers, "tiny", fine["id"], availability_zone=az)
            wait_status(api, member.headers, b["id"], "ACTIVE")

            def failing() -> list[dict[str, Any]] | None:
                progress = host(api, host_id)["loop_progress"] or {}
                named = [f for f in progress.get("failing", []) if f["server_id"] == a["id"]]
                return named or None
            (entry,) = wait_until(failing, WAIT, "the failing server in the loop progress")
            assert "502" in entry["message"], entry
            assert server(api, member.headers, a["id"])["status"] == "BUILD"
            assert host(api, host_id)["state"] == "up"  # the loop goes on: not degraded
            refused = proxy.refused
            wait_until(lambda: proxy.refused > refused, WAIT, "the download retried")

            proxy.failing.clear()  # the download works again: the next retry builds it
            wait_status(api, member.headers, a["id"], "ACTIVE")
            wait_until(lambda: not (host(api, host_id)["loop_progress"] or {})["failing"],
                       WAIT, "no server failing any more")
            for s in (a, b):
                assert httpx.delete(f"{api}/v1/servers/{s['id']}",
                                    headers=member.headers).status_code == 202
            for s in (a, b):
                wait_gone(api, member.headers, s["id"])
        finally:
            agent.stop()
            print(agent.output())
