"""Acceptance 6 end to end: two enrolled agents; one's credential cannot read or change the
other host's servers, nor reach any tenant or admin endpoint."""

from __future__ import annotations

import subprocess
from collections.abc import Iterator
from datetime import UTC, datetime
from pathlib import Path

import httpx
import pytest

from compute_agent.client import AgentApiError, AgentClient, Observation
from compute_agent.config import load_credential
from tests.e2e.stack import (
    ADMIN,
    ThreadAgent,
    assert_placed_on,
    create_server,
    start_test_driver_agent,
    upload_image,
    wait_status,
)
from tests.factories import bearer, make_account, unique

pytestmark = [pytest.mark.libvirt]


@pytest.fixture(scope="module")
def api(shared_api: str) -> str:
    return shared_api


@pytest.fixture
def two_agents(api: str, tmp_path: Path) -> Iterator[tuple[ThreadAgent, ThreadAgent]]:
    a = start_test_driver_agent(api, tmp_path / "a", az=unique("az"))
    b = start_test_driver_agent(api, tmp_path / "b", az=unique("az"))
    yield a, b
    a.stop()
    b.stop()


def test_an_agent_cannot_touch_another_hosts_servers(
        api: str, two_agents: tuple[ThreadAgent, ThreadAgent], tmp_path: Path) -> None:
    a, b = two_agents
    with httpx.Client(base_url=api) as c:
        member = make_account(c, ADMIN)
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    image = upload_image(api, member.headers, disk.read_bytes(), "qcow2")
    s = create_server(api, member.headers, "tiny", image["id"], availability_zone=b.az)
    sid = s["id"]
    assert_placed_on(api, sid, b.name)
    wait_status(api, member.headers, sid, "ACTIVE")

    cred_a = load_credential(a.agent.settings.state_dir)
    assert cred_a is not None
    with AgentClient(api, cred_a.credential, retries=0) as as_a:
        assert sid not in {d.server_id for d in as_a.desired_servers().servers}
        for attempt in (
            lambda: as_a.observe(sid, "absent", idempotency_key=unique("k")),
            lambda: as_a.put_console(sid, b"not yours"),
        ):
            with pytest.raises(AgentApiError) as err:
                attempt()
            assert (err.value.status, err.value.code) == (404, "server_not_found")
        hb = as_a.heartbeat([Observation(server_id=sid, state="absent",
                                         seen_at=datetime.now(UTC))])
        assert hb.ignored == [sid]

    # B's server is untouched.
    wait_status(api, member.headers, sid, "ACTIVE")
    assert b.agent.hv.list_managed()[sid].observed == "running"
    r = httpx.get(f"{api}/v1/servers/{sid}/console", headers=member.headers)
    assert "not yours" not in r.text

    # A host credential is no user: tenant and admin endpoints refuse it.
    h = bearer(cred_a.credential)
    for method, path in (("GET", "/v1/servers"), ("GET", f"/v1/servers/{sid}"),
                         ("DELETE", f"/v1/servers/{sid}"), ("GET", "/v1/flavors"),
                         ("GET", "/v1/hosts"), ("POST", "/v1/hosts/enrollment-tokens"),
                         ("GET", f"/v1/servers/{sid}/console"), ("GET", "/v1/images")):
        r = httpx.request(method, api + path, headers=h)
        assert r.status_code == 401, (method, path, r.status_code, r.text)
    wait_status(api, member.headers, sid, "ACTIVE")
