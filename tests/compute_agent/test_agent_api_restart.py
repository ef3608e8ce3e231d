"""The API process is killed (SIGKILL) and restarted on the same database while an agent runs.

Nothing is lost: a server that was running keeps running and stays ACTIVE, a stop accepted
just before the kill is carried out after the restart, the agent reconnects by itself (its
heartbeats arrive again) and a server created after the restart becomes ACTIVE.
"""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import datetime
from pathlib import Path

import httpx
import pytest

from api.config import Settings
from tests.e2e.stack import (
    ADMIN,
    ApiProcess,
    ThreadAgent,
    action,
    assert_placed_on,
    create_server,
    host,
    start_test_driver_agent,
    upload_image,
    wait_status,
    wait_until,
)
from tests.factories import make_account, unique

pytestmark = [pytest.mark.libvirt, pytest.mark.slow]


@pytest.fixture
def api_process(settings: Settings, client: object) -> Iterator[ApiProcess]:
    proc = ApiProcess(settings)
    proc.start()
    yield proc
    proc.stop()


@pytest.fixture
def agent(api_process: ApiProcess, tmp_path: Path) -> Iterator[ThreadAgent]:
    a = start_test_driver_agent(api_process.url, tmp_path / "host", az=unique("az"))
    yield a
    a.stop()


def test_agents_reconnect_after_an_api_restart(api_process: ApiProcess, agent: ThreadAgent,
                                               tmp_path: Path) -> None:
    api = api_process.url
    with httpx.Client(base_url=api) as c:
        member = make_account(c, ADMIN)
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    image = upload_image(api, member.headers, disk.read_bytes(), "qcow2")

    def boot() -> str:
        s = create_server(api, member.headers, "tiny", image["id"], availability_zone=agent.az)
        assert_placed_on(api, s["id"], agent.name)
        wait_status(api, member.headers, s["id"], "ACTIVE")
        return str(s["id"])

    running, to_stop = boot(), boot()
    action(api, member.headers, to_stop, "stop")
    api_process.kill()  # the stop is committed; the agent may or may not have seen it yet

    api_process.start()
    restarted_at = datetime.now().astimezone()
    wait_status(api, member.headers, to_stop, "SHUTOFF")
    assert agent.agent.hv.list_managed()[to_stop].observed == "shutoff"
    assert wait_status(api, member.headers, running, "ACTIVE")
    assert agent.agent.hv.list_managed()[running].observed == "running"

    def heartbeat_after_restart() -> bool:
        h = host(api, agent.host_id)
        seen = h["last_heartbeat_at"]
        return h["state"] == "up" and seen is not None and \
            datetime.fromisoformat(seen) > restarted_at
    wait_until(heartbeat_after_restart, 60, "a heartbeat after the restart")

    after = boot()
    assert agent.agent.hv.list_managed()[after].observed == "running"
    assert agent.thread.is_alive()
