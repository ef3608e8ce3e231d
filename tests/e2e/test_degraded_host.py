"""A host whose agent heartbeats but whose reconcile loop is stuck is ``degraded``.

A real agent process (the test-only halting agent, tests/e2e/halting_agent.py) halts its
reconcile thread for ever right after defining a server's domain; its heartbeat thread keeps
beating. The API (a real process with ``host_degraded_after_seconds`` of 10) shows the host
degraded in the host view, the CLI and ``/metrics``; the scheduler refuses it with the reason
``degraded`` (create and simulate). Killed and started again as the ordinary agent, the loop
progresses and the host is ``up`` again; the halted build finishes.
"""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families
from typer.testing import CliRunner

from cli.main import app
from compute_agent.hypervisor import write_test_node_xml
from tests.conftest import ADMIN_TOKEN
from tests.e2e.stack import (
    ADMIN,
    WAIT,
    AgentProcess,
    create_server,
    enrollment_token,
    host,
    host_id_of,
    upload_image,
    wait_gone,
    wait_status,
    wait_until,
)
from tests.factories import make_account, unique

pytestmark = [pytest.mark.libvirt]


def _degraded_hosts(api: str) -> float:
    body = httpx.get(f"{api}/metrics", headers=ADMIN).text
    return sum(s.value for f in text_string_to_metric_families(body) for s in f.samples
               if s.name == "minicloud_hosts" and s.labels.get("state") == "degraded")


def test_a_stuck_reconcile_loop_makes_its_host_degraded_until_it_progresses(
        live_api: Callable[[int], list[str]], monkeypatch: pytest.MonkeyPatch,
        tmp_path: Path) -> None:
    monkeypatch.setenv("MINICLOUD_HOST_DEGRADED_AFTER_SECONDS", "10")
    api = live_api(1)[0]  # a new process, with the setting above
    with httpx.Client(base_url=api) as c:
        member = make_account(c, ADMIN)
    image = upload_image(api, member.headers, b"\0" * 512 * 1024, "raw")
    az = unique("az")
    home = tmp_path / "agent"
    home.mkdir()
    uri = write_test_node_xml(home / "node.xml", 8, 16384, network="default")
    marker = tmp_path / "halted"
    quick = {"MINICLOUD_AGENT_LONG_POLL_WAIT": "1"}  # a healthy loop passes every second
    agent = AgentProcess(api, home, unique("stuck"), uri, az=az, env=quick)
    agent.start(token=enrollment_token(api), env={"MINICLOUD_TEST_HALT_AFTER": "define",
                                                  "MINICLOUD_TEST_HALT_MARKER": str(marker)})
    try:
        host_id = wait_until(lambda: (home / "state" / "credential.json").exists()
                             and host_id_of(home), WAIT, "enrollment")
        wait_until(lambda: host(api, host_id)["state"] == "up", WAIT, "host up")
        wait_until(lambda: (host(api, host_id)["loop_progress"] or {}).get("passes"), WAIT,
                   "the loop's passes in the heartbeat")

        s = create_server(api, member.headers, "tiny", image["id"], availability_zone=az)
        wait_until(marker.exists, WAIT, "the agent halted inside a pass")
        seen = wait_until(lambda: (h := host(api, host_id))["state"] == "degraded" and h,
                          WAIT, "host degraded")
        assert seen["last_heartbeat_at"] is not None and seen["loop_progress"]["passes"] >= 1
        # Other tests' hosts share the database (they may turn degraded or down meanwhile):
        # the gauge counts what the hosts API shows as degraded, this host among them.
        def gauge_agrees() -> bool:
            listed = httpx.get(f"{api}/v1/hosts", headers=ADMIN, params={"limit": 1000}).json()
            degraded = {h["id"] for h in listed if h["state"] == "degraded"}
            return host_id in degraded and _degraded_hosts(api) == len(degraded)
        wait_until(gauge_agrees, WAIT, "the degraded gauge counts the degraded hosts")

        shown = CliRunner().invoke(app, ["host", "show", host_id],
                                   env={"MINICLOUD_URL": api, "MINICLOUD_TOKEN": ADMIN_TOKEN})
        assert shown.exit_code == 0, shown.output
        assert "degraded" in shown.stdout
        listed = CliRunner().invoke(app, ["--json", "host", "list"],
                                    env={"MINICLOUD_URL": api, "MINICLOUD_TOKEN": ADMIN_TOKEN})
        assert listed.exit_code == 0, listed.output
        assert '"degraded"' in listed.stdout

        r = httpx.post(f"{api}/v1/servers", headers=member.headers, json={
            "name": unique("vm"), "flavor": "tiny", "image": image["id"],
            "availability_zone": az})
        assert r.status_code == 409, r.text
        problem = r.json()
        assert problem["code"] == "no_valid_host"
        assert problem["refusals"].get("degraded", 0) >= 1
        assert problem["refusals_by_filter"]["progress"] >= 1
        assert "degraded" in problem["detail"]
        r = httpx.post(f"{api}/v1/scheduler/simulate", headers=ADMIN,
                       json={"flavor": "tiny", "availability_zone": az})
        assert r.status_code == 200, r.text
        assert {"host_id": host_id, "host": agent.name, "reason": "degraded"} \
            in r.json()["per_host"]

        agent.kill()  # -9, then the ordinary agent: its loop progresses again
        agent.start(env={"MINICLOUD_TEST_HALT_AFTER": ""})
        wait_until(lambda: host(api, host_id)["state"] == "up", WAIT, "host up again")
        wait_status(api, member.headers, s["id"], "ACTIVE")
        r = httpx.post(f"{api}/v1/scheduler/simulate", headers=ADMIN,
                       json={"flavor": "tiny", "availability_zone": az})
        assert r.status_code == 200, r.text
        assert host_id not in {p["host_id"] for p in r.json()["per_host"]}
        assert httpx.delete(f"{api}/v1/servers/{s['id']}",
                            headers=member.headers).status_code == 202
        wait_gone(api, member.headers, s["id"])
    finally:
        agent.stop()
        print(agent.output())
