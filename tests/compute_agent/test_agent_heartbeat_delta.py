"""The agent's heartbeats carry only what changed, and everything when the API asks.

A real agent (thread) on the libvirt test driver heartbeats every second through a recording
proxy (tests/e2e/heartbeat_proxy.py) in front of a real ``minicloud-api`` process: a server's
new state is reported once, an unchanged server is not sent again, and after an answer with
``full_report`` the very next heartbeat carries every server. A host the API heard nothing
from (the proxy swallowed its heartbeats) is down; when it is heard again the API asks for a
full report, and billing hears the server running again.
"""

from __future__ import annotations

import socket
import subprocess
from collections.abc import Callable
from pathlib import Path
from typing import Any

import httpx
import pytest

from api.config import Settings
from tests.e2e.heartbeat_proxy import HeartbeatProxy
from tests.e2e.stack import (
    ADMIN,
    WAIT,
    action,
    create_server,
    start_test_driver_agent,
    upload_image,
    wait_status,
    wait_until,
)
from tests.e2e.test_evacuation import ShortMonitorApi
from tests.factories import make_account, unique

pytestmark = [pytest.mark.libvirt]


def _states(beat: dict[str, Any]) -> dict[str, str]:
    return {o["server_id"]: o["state"] for o in beat["observed"]}


def _after(proxy: HeartbeatProxy, start: int, check: Callable[[dict[str, Any]], bool],
           what: str) -> int:
    """The index of the first heartbeat from ``start`` on that passes ``check``."""
    def found() -> tuple[int] | None:  # a tuple: index 0 is an answer too
        return next(((i,) for i, b in enumerate(proxy.sent()) if i >= start and check(b)),
                    None)
    return wait_until(found, WAIT, what)[0]


def test_heartbeats_carry_changes_only_and_everything_when_the_api_asks(
        live_api: Callable[[int], list[str]], tmp_path: Path) -> None:
    api = live_api(1)[0]
    with httpx.Client(base_url=api) as c:
        member = make_account(c, ADMIN)
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    image = upload_image(api, member.headers, disk.read_bytes(), "qcow2")
    with HeartbeatProxy(api) as proxy:
        agent = start_test_driver_agent(proxy.url, tmp_path / "host", az=unique("az"))
        try:
            sid = create_server(api, member.headers, "tiny", image["id"],
                                availability_zone=agent.az)["id"]
            wait_status(api, member.headers, sid, "ACTIVE")
            # The new server's state is reported ...
            running = _after(proxy, 0, lambda b: _states(b).get(sid) == "running",
                             "a heartbeat reporting the server running")
            # ... and, unchanged, not sent again: later heartbeats are empty and partial.
            _after(proxy, running + 3, lambda b: True, "three more heartbeats")
            quiet = proxy.sent()[running + 1:running + 4]
            assert [(b["observed"], b["full"], b.get("foreign")) for b in quiet] \
                == [([], False, None)] * 3
            assert all(b["progress"]["passes"] >= 1 for b in quiet)  # progress in every one

            # Refused heartbeats (an API answering agent_busy, past the client's retries) do
            # not turn the next one into a full report: it carries what is unacknowledged.
            refused_from = len(proxy.sent())
            proxy.refuse = 12
            wait_until(lambda: proxy.refuse == 0, WAIT, "twelve refused heartbeats")
            after = _after(proxy, refused_from + 12, lambda b: True, "a heartbeat after them")
            assert all(a == {} for a in proxy.answered()[refused_from:refused_from + 12])
            assert (proxy.sent()[after]["full"], proxy.sent()[after]["observed"]) == (False, [])

            # The API asks for a full report: the very next heartbeat carries every server.
            proxy.ask_full_report = True
            wait_until(lambda: proxy.asked is not None, WAIT, "a heartbeat answered full_report")
            asked = proxy.asked
            assert asked is not None
            _after(proxy, asked + 1, lambda b: True, "the heartbeat after it")
            following = proxy.sent()[asked + 1]
            assert (following["full"], _states(following), following["foreign"]) \
                == (True, {sid: "running"}, [])

            # A change of state is reported in a partial heartbeat.
            action(api, member.headers, sid, "stop")
            wait_status(api, member.headers, sid, "SHUTOFF")
            stopped = _after(proxy, asked + 2, lambda b: _states(b).get(sid) == "shutoff",
                             "a heartbeat reporting the server shut off")
            assert proxy.sent()[stopped]["full"] is False
        finally:
            agent.stop()


def _ledger(api: str, headers: dict[str, str], sid: str) -> list[str]:
    r = httpx.get(f"{api}/v1/usage/servers/{sid}", headers=headers,
                  params={"start": "2000-01-01T00:00:00Z", "end": "2100-01-01T00:00:00Z"})
    assert r.status_code == 200, r.text
    return [e["kind"] for e in r.json()["entries"]]


def test_a_host_heard_again_after_a_silence_reports_everything_and_billing_resumes(
        settings: Settings, client: object, tmp_path: Path) -> None:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = int(sock.getsockname()[1])
    monitor = ShortMonitorApi(settings, port)  # a host is down after 4 s of silence
    api = monitor.url
    try:
        with httpx.Client(base_url=api) as c:
            member = make_account(c, ADMIN)
        disk = tmp_path / "disk.qcow2"
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"],
                       check=True)
        image = upload_image(api, member.headers, disk.read_bytes(), "qcow2")
        with HeartbeatProxy(api) as proxy:
            agent = start_test_driver_agent(proxy.url, tmp_path / "host", az=unique("az"))
            try:
                sid = create_server(api, member.headers, "tiny", image["id"],
                                    availability_zone=agent.az)["id"]
                wait_status(api, member.headers, sid, "ACTIVE")
                wait_until(lambda: _ledger(api, member.headers, sid) == ["created", "running"],
                           WAIT, "the server billed running")
                _after(proxy, 0, lambda b: _states(b).get(sid) == "running",
                       "the running server reported")
                proxy.swallow = True
                wait_until(lambda: _ledger(api, member.headers, sid)[-1:] == ["host_down"],
                           WAIT, "billing to hear the host down")
                back = len(proxy.sent())
                proxy.swallow = False
                wait_until(lambda: _ledger(api, member.headers, sid)
                           == ["created", "running", "host_down", "running"],
                           WAIT, "billing to hear the server running again")
                # The agent had nothing new to say: its first heartbeat heard again was
                # partial; the API asked for everything, and the next one carried it.
                first = _after(proxy, back, lambda b: True, "a heartbeat heard again")
                _after(proxy, first + 1, lambda b: True, "the heartbeat after it")
                beats, answers = proxy.sent(), proxy.answered()
                assert (beats[first]["full"], beats[first]["observed"],
                        answers[first]["full_report"]) == (False, [], True)
                assert (beats[first + 1]["full"], _states(beats[first + 1])) \
                    == (True, {sid: "running"})
            finally:
                agent.stop()
    finally:
        monitor.stop()
