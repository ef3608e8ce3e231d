"""The agent's optional metrics port: off by default, loopback only, image cache bytes."""

from __future__ import annotations

import socket
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families

from compute_agent.config import AgentSettings
from compute_agent.metrics import serve


def test_metrics_are_off_unless_a_port_is_set(tmp_path: Path) -> None:
    assert AgentSettings(state_dir=tmp_path).metrics_port is None
    assert serve(AgentSettings(state_dir=tmp_path)) is False


def test_the_metrics_port_reports_the_image_cache_size_on_loopback(tmp_path: Path) -> None:
    cache = tmp_path / "images"
    (cache / "sub").mkdir(parents=True)
    (cache / "a.qcow2").write_bytes(b"x" * 1000)
    (cache / "sub" / "b.raw").write_bytes(b"y" * 234)
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    assert serve(AgentSettings(state_dir=tmp_path, image_cache_dir=cache, metrics_port=port))
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples = {s.name: s.value for f in text_string_to_metric_families(body) for s in f.samples}
    assert samples["minicloud_agent_image_cache_bytes"] == 1234
    (cache / "a.qcow2").unlink()  # evicted: the next scrape sees it
    body = httpx.get(f"http://127.0.0.1:{port}/metrics", timeout=5).text
    samples = {s.name: s.value for f in text_string_to_metric_families(body) for s in f.samples}
    assert samples["minicloud_agent_image_cache_bytes"] == 234
