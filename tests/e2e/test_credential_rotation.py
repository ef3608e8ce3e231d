"""The agent rotates its own host credential on schedule, and a kill -9 at any point of a
rotation loses nothing.

A real agent process (``credential_max_age`` of 2 s) is halted for ever (tests/e2e/
halting_agent.py) either after storing its next credential (the API knows nothing yet) or
after the API took it (not promoted in the file yet), then killed with SIGKILL and started
again as the ordinary agent: it finishes the rotation with the very credential it stored, the
host keeps heartbeating, and only the current credential is accepted.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from compute_agent.hypervisor import write_test_node_xml
from tests.e2e.stack import (
    WAIT,
    AgentProcess,
    enrollment_token,
    host,
    host_id_of,
    wait_until,
)
from tests.factories import unique

pytestmark = [pytest.mark.libvirt]


def _file(home: Path) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((home / "state" / "credential.json").read_text())
    return data


def _accepted(api: str, credential: str) -> bool:
    r = httpx.post(f"{api}/v1/agent/heartbeat", json={"observed": []},
                   headers={"Authorization": f"Bearer {credential}"})
    assert r.status_code in (200, 401), r.text
    return r.status_code == 200


@pytest.mark.parametrize("step", ["rotate-saved", "rotate-sent"])
def test_a_kill_during_a_credential_rotation_loses_nothing(
        live_api: Callable[[int], list[str]], tmp_path: Path, step: str) -> None:
    api = live_api(1)[0]
    home = tmp_path / "agent"
    home.mkdir()
    uri = write_test_node_xml(home / "node.xml", 4, 8192, network="default")
    marker = tmp_path / "halted"
    agent = AgentProcess(api, home, unique("rot"), uri, az=unique("az"), env={
        "MINICLOUD_AGENT_CREDENTIAL_MAX_AGE": "2", "MINICLOUD_AGENT_LONG_POLL_WAIT": "1"})
    agent.start(token=enrollment_token(api), env={"MINICLOUD_TEST_HALT_AFTER": step,
                                                  "MINICLOUD_TEST_HALT_MARKER": str(marker)})
    try:
        wait_until(marker.exists, WAIT, f"the agent halted at {step}")
        host_id = host_id_of(home)
        halted = _file(home)
        old, new = halted["credential"], halted["pending"]
        assert new and new != old
        # Before the API heard of it only the old credential works; after, only the new one.
        assert _accepted(api, old) is (step == "rotate-saved")
        assert _accepted(api, new) is (step == "rotate-sent")

        agent.kill()
        beat = host(api, host_id)["last_heartbeat_at"]
        agent.start(env={"MINICLOUD_TEST_HALT_AFTER": ""})
        finished = wait_until(lambda: (f := _file(home))["credential"] != old
                              and not f["pending"] and f, WAIT, "the rotation finished")
        # The credential stored before the kill is the one that was taken; nothing else was.
        assert finished["credential"] == new
        assert not _accepted(api, old)
        wait_until(lambda: host(api, host_id)["last_heartbeat_at"] != beat, WAIT,
                   "a heartbeat of the restarted agent")
        # And on schedule: another rotation, after which only its credential works.
        third = wait_until(lambda: (f := _file(home))["credential"] not in (old, new)
                           and not f["pending"] and f["credential"], WAIT, "next rotation")
        assert not _accepted(api, new)
        assert _accepted(api, third) or _file(home)["credential"] != third
        assert agent.alive()
        assert host(api, host_id)["state"] == "up"
    finally:
        agent.stop()
        print(agent.output())
