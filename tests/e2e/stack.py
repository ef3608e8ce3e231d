"""Helpers of the whole-stack tests: real API processes, real agents, real HTTP.

Agents run either as ``minicloud-agent`` subprocesses (``AgentProcess``, for kill -9 and
qemu:///system) or as threads of this process on the libvirt test driver (``start_agent``).
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import httpx

from compute_agent.agent import Agent, ensure_enrolled
from compute_agent.config import AgentSettings
from compute_agent.hypervisor import Hypervisor, write_test_node_xml
from tests.conftest import ADMIN_TOKEN
from tests.factories import bearer, unique

REPO = Path(__file__).resolve().parents[2]
ADMIN = bearer(ADMIN_TOKEN)
T = TypeVar("T")


def wait_until(check: Callable[[], T | None], timeout: float, what: str,
               poll: float = 0.2) -> T:
    """Poll ``check`` until it returns something truthy; fail after ``timeout`` s (a bound on a
    hang, not a timing assertion)."""
    deadline = time.monotonic() + timeout
    last: T | None = None
    while time.monotonic() < deadline:
        last = check()
        if last:
            return last
        time.sleep(poll)
    raise AssertionError(f"timed out after {timeout}s waiting for {what} (last: {last!r})")


def enrollment_token(api: str) -> str:
    r = httpx.post(f"{api}/v1/hosts/enrollment-tokens", headers=ADMIN)
    assert r.status_code == 201, r.text
    return str(r.json()["token"])


def upload_image(api: str, headers: dict[str, str], data: bytes, disk_format: str,
                 **fields: Any) -> dict[str, Any]:
    """Create an image and stream its bytes through the images API."""
    body = {"name": unique("img"), "disk_format": disk_format} | fields
    r = httpx.post(f"{api}/v1/images", json=body, headers=headers)
    assert r.status_code == 201, r.text
    image_id = r.json()["id"]
    r = httpx.put(f"{api}/v1/images/{image_id}/file", content=data, headers=headers,
                  timeout=120)
    assert r.status_code == 200, r.text
    image: dict[str, Any] = r.json()
    return image


def server(api: str, headers: dict[str, str], server_id: str) -> dict[str, Any]:
    r = httpx.get(f"{api}/v1/servers/{server_id}", headers=headers)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


# Generous bounds: the build machine is shared and often heavily loaded. They only stop a hung
# test; nothing asserts how fast anything is.
WAIT = 180.0


def wait_status(api: str, headers: dict[str, str], server_id: str, status: str,
                timeout: float = WAIT) -> dict[str, Any]:
    def check() -> dict[str, Any] | None:
        s = server(api, headers, server_id)
        if s["status"] == "ERROR" and status != "ERROR":
            raise AssertionError(f"server went to ERROR: {s['fault']}")
        return s if s["status"] == status and s["task_state"] is None else None
    return wait_until(check, timeout, f"server {server_id} {status}")


def wait_gone(api: str, headers: dict[str, str], server_id: str,
              timeout: float = WAIT) -> None:
    wait_until(lambda: httpx.get(f"{api}/v1/servers/{server_id}",
                                 headers=headers).status_code == 404,
               timeout, f"server {server_id} deleted")


def action(api: str, headers: dict[str, str], server_id: str, name: str, **extra: Any) -> None:
    r = httpx.post(f"{api}/v1/servers/{server_id}/actions", json={"action": name} | extra,
                   headers=headers)
    assert r.status_code == 202, r.text


def host(api: str, host_id: str) -> dict[str, Any]:
    r = httpx.get(f"{api}/v1/hosts/{host_id}", headers=ADMIN)
    assert r.status_code == 200, r.text
    body: dict[str, Any] = r.json()
    return body


def allocated(api: str, host_id: str) -> dict[str, int]:
    return {rc: r["allocated"] for rc, r in host(api, host_id)["resources"].items()}


def create_server(api: str, headers: dict[str, str], flavor: str, image: str,
                  **fields: Any) -> dict[str, Any]:
    body = {"name": unique("vm"), "flavor": flavor, "image": image} | fields
    r = httpx.post(f"{api}/v1/servers", json=body, headers=headers)
    assert r.status_code == 202, r.text
    created: dict[str, Any] = r.json()
    return created


# ------------------------------------------------------------------ agents in this process

@dataclass
class ThreadAgent:
    """A real agent running in a thread of the test process (test-driver hosts)."""

    agent: Agent
    thread: threading.Thread
    host_id: str
    name: str
    az: str

    def stop(self) -> None:
        self.agent.stop()
        self.thread.join(60)
        self.agent.close()
        self.agent.hv.close()


def agent_settings(api: str, home: Path, name: str, uri: str, **extra: Any) -> AgentSettings:
    return AgentSettings(api_url=api, name=name, libvirt_uri=uri, state_dir=home / "state",
                         instances_dir=home / "instances", image_cache_dir=home / "images",
                         virt_type="qemu", heartbeat_interval=1.0, shutdown_timeout=2.0,
                         console_interval=0.5, long_poll_wait=5.0, **extra)


def start_test_driver_agent(api: str, home: Path, *, vcpus: int = 4, ram_mb: int = 8192,
                            disk_gb: int = 100, name: str | None = None,
                            network: str = "default", az: str = "nova",
                            agent_class: type[Agent] = Agent, **extra: Any) -> ThreadAgent:
    """Enroll and run an agent (``agent_class``: the real one, or a test subclass) on its own
    test-driver node of the given size (in zone ``az``: tests give each their own zone, so the
    scheduler places their servers on their hosts); ``extra``: more agent settings."""
    name = name or unique("sim")
    home.mkdir(parents=True, exist_ok=True)
    uri = write_test_node_xml(home / "node.xml", vcpus, ram_mb,
                              network=None if network == "none" else network)
    settings = agent_settings(api, home, name, uri, disk_gb=disk_gb, network=network,
                              availability_zone=az, **extra)
    cred = ensure_enrolled(settings, "qemu", token=enrollment_token(api))
    agent = agent_class(settings, cred, Hypervisor(uri), "qemu")
    thread = threading.Thread(target=agent.run, name=f"agent-{name}", daemon=True)
    thread.start()
    wait_until(lambda: (h := host(api, cred.host_id))["state"] == "up" and h["resources"],
               WAIT, f"host {name} up with its inventory")
    return ThreadAgent(agent, thread, cred.host_id, name, az)


# ------------------------------------------------------------------ agent subprocesses

class AgentProcess:
    """``minicloud-agent`` as its own process (so it can be killed with SIGKILL)."""

    def __init__(self, api: str, home: Path, name: str, uri: str, *, az: str = "nova",
                 extra_args: list[str] | None = None, env: dict[str, str] | None = None,
                 run_as: list[str] | None = None, umask: int = -1) -> None:
        self.api, self.home, self.name, self.uri, self.az = api, home, name, uri, az
        self.extra_args = extra_args or []
        self.env = env or {}
        # A command the agent runs under (e.g. setpriv to another user), and its umask.
        self.run_as = run_as or []
        self.umask = umask
        self.proc: subprocess.Popen[bytes] | None = None
        self.log = home / "agent.log"

    def start(self, token: str | None = None, env: dict[str, str] | None = None) -> None:
        full_env = {**os.environ, "PYTHONPATH": str(REPO), **self.env, **(env or {})}
        # The test-only halting agent (tests/e2e/halting_agent.py) when a halt step is set.
        entry = ("from tests.e2e.halting_agent import main; main()"
                 if full_env.get("MINICLOUD_TEST_HALT_AFTER")
                 else "from compute_agent.main import run; run()")
        args = [sys.executable, "-c", entry,
                "--api", self.api, "--name", self.name, "--libvirt-uri", self.uri,
                "--az", self.az,
                "--state-dir", str(self.home / "state"),
                "--instances-dir", str(self.home / "instances"),
                "--image-cache-dir", str(self.home / "images"),
                "--virt-type", "qemu", "--heartbeat-interval", "1",
                "--console-interval", "0.5", "--shutdown-timeout", "30", *self.extra_args]
        if token:
            args += ["--enroll", token]
        out = open(self.log, "ab")  # noqa: SIM115 - the child owns it
        self.proc = subprocess.Popen([*self.run_as, *args], env=full_env, stdout=out,
                                     stderr=subprocess.STDOUT, cwd=REPO, umask=self.umask)
        out.close()

    def kill(self) -> None:
        """SIGKILL: no cleanup of any kind."""
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(60)
            except subprocess.TimeoutExpired:
                self.kill()

    def alive(self) -> bool:
        return self.proc is not None and self.proc.poll() is None

    def output(self) -> str:
        return self.log.read_text(errors="replace")[-4000:] if self.log.exists() else ""


def host_id_of(home: Path) -> str:
    import json
    return str(json.loads((home / "state" / "credential.json").read_text())["host_id"])


def assert_placed_on(api: str, server_id: str, host_name: str) -> None:
    """The scheduler placed the server on ``host_name`` (tests give each agent its own zone)."""
    r = httpx.get(f"{api}/v1/servers/{server_id}", headers=ADMIN)
    assert r.status_code == 200, r.text
    assert r.json()["host"] == host_name, r.json()


# ------------------------------------------------------------------ an API process we can kill

class ApiProcess:
    """One ``minicloud-api`` process on a fixed port, restartable on the same database."""

    def __init__(self, settings: Any) -> None:
        import socket
        with socket.socket() as sock:
            sock.bind(("127.0.0.1", 0))
            self.port = int(sock.getsockname()[1])
        self.settings = settings
        self.url = f"http://127.0.0.1:{self.port}"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self) -> None:
        env = dict(os.environ, MINICLOUD_DATABASE_URL=self.settings.effective_database_url,
                   MINICLOUD_DATA_DIR=str(self.settings.data_dir),
                   MINICLOUD_LOG_LEVEL="WARNING", PYTHONPATH=str(REPO))
        out = open(Path(self.settings.data_dir) / f"api-{self.port}.log", "ab")  # noqa: SIM115
        self.proc = subprocess.Popen(
            [sys.executable, "-c", "from api.server import run; run()", "--host", "127.0.0.1",
             "--port", str(self.port), "--no-migrate"], env=env, stdout=out,
            stderr=subprocess.STDOUT, cwd=REPO)
        out.close()

        def healthy() -> bool:
            assert self.proc is not None and self.proc.poll() is None, "API exited"
            try:
                return httpx.get(self.url + "/healthz", timeout=1).status_code == 200
            except httpx.TransportError:
                return False
        wait_until(healthy, 60, "API up")

    def kill(self) -> None:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(10)

    def stop(self) -> None:
        if self.proc is not None and self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(20)
