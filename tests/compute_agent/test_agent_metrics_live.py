"""The real agent process's metrics endpoint, scraped and parsed as Prometheus would.

Reconcile passes fill ``minicloud_agent_reconcile_pass_seconds``; a build brings its image
into the cache (``minicloud_agent_image_cache_bytes``); a libvirt refusal (a domain that is
not minicloud's already holds the name a server's domain needs) counts in
``minicloud_agent_libvirt_errors_total``.
"""

from __future__ import annotations

import socket
import subprocess
import uuid
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path

import httpx
import pytest
from prometheus_client.parser import text_string_to_metric_families

from compute_agent.hypervisor import write_test_node_xml
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
    wait_status,
    wait_until,
)
from tests.factories import make_account, unique

pytestmark = [pytest.mark.libvirt]


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def _scrape(port: int) -> dict[str, float] | None:
    try:
        body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    except httpx.TransportError:
        return None  # not serving yet
    return {s.name: s.value for f in text_string_to_metric_families(body) for s in f.samples
            if not s.labels or (set(s.labels) == {"le"} and s.labels["le"] == "+Inf")}


def test_the_agent_endpoint_reports_passes_image_cache_and_libvirt_errors(
        live_api: Callable[[int], list[str]], tmp_path: Path) -> None:
    api = live_api(1)[0]
    with httpx.Client(base_url=api) as c:
        member = make_account(c, ADMIN)
    disk = tmp_path / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(disk), "16M"], check=True)
    image = upload_image(api, member.headers, disk.read_bytes(), "qcow2")
    az = unique("az")
    home = tmp_path / "agent"
    home.mkdir()
    node = home / "node.xml"
    uri = write_test_node_xml(node, 8, 16384, network="default")
    port = _free_port()
    agent = AgentProcess(api, home, unique("met"), uri, az=az, env={
        "MINICLOUD_AGENT_METRICS_PORT": str(port), "MINICLOUD_AGENT_LONG_POLL_WAIT": "1"})
    agent.start(token=enrollment_token(api))
    try:
        first = wait_until(lambda: (m := _scrape(port)) and
                           m["minicloud_agent_reconcile_pass_seconds_count"] >= 1 and m,
                           WAIT, "a reconcile pass in the metrics")
        assert first["minicloud_agent_image_cache_bytes"] == 0
        assert first["minicloud_agent_libvirt_errors_total"] == 0
        host_id = host_id_of(home)

        s1 = create_server(api, member.headers, "tiny", image["id"], availability_zone=az)
        wait_status(api, member.headers, s1["id"], "ACTIVE")
        built = wait_until(lambda: (m := _scrape(port)) and
                           m["minicloud_agent_reconcile_pass_seconds_count"]
                           > first["minicloud_agent_reconcile_pass_seconds_count"] and m,
                           WAIT, "more passes")
        assert built["minicloud_agent_image_cache_bytes"] == disk.stat().st_size
        assert built["minicloud_agent_reconcile_pass_seconds_sum"] > 0
        assert built["minicloud_agent_libvirt_errors_total"] == 0

        # The agent stops; a server is placed on its host meanwhile; libvirt (the test
        # driver's node file) comes back with a domain that is not minicloud's holding the
        # name that server's domain needs.
        agent.stop()
        s2 = create_server(api, member.headers, "tiny", image["id"], availability_zone=az)
        assert server(api, ADMIN, s2["id"])["host"] == agent.name
        root = ET.parse(node).getroot()
        root.append(ET.fromstring(
            f"<domain type='test'><name>minicloud-{s2['id']}</name><uuid>{uuid.uuid4()}</uuid>"
            "<memory>1024</memory><os><type>hvm</type></os></domain>"))
        ET.ElementTree(root).write(node)
        agent.start()
        wait_status(api, member.headers, s2["id"], "ERROR")
        assert "already exists" in server(api, member.headers, s2["id"])["fault"]["message"]
        after = wait_until(lambda: (m := _scrape(port)) and
                           m["minicloud_agent_libvirt_errors_total"] >= 1 and m,
                           WAIT, "the libvirt error counted")
        assert after["minicloud_agent_reconcile_pass_seconds_count"] >= 1
        assert after["minicloud_agent_image_cache_bytes"] == disk.stat().st_size
        wait_status(api, member.headers, s1["id"], "ACTIVE")
        assert host(api, host_id)["state"] == "up"
        for s in (s1, s2):
            assert httpx.delete(f"{api}/v1/servers/{s['id']}",
                                headers=member.headers).status_code == 202
    finally:
        agent.stop()
        print(agent.output())
