"""Browser fixtures: Debian's headless Chromium through chromedriver (Selenium), a real
minicloud-api process, and simulated compute hosts (the real agent on libvirt's test driver).
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import httpx
import pytest
from selenium import webdriver
from selenium.webdriver.chrome.service import Service
from selenium.webdriver.remote.webdriver import WebDriver

from compute_agent.config import AgentSettings
from compute_agent.simulate import HostSize, SimulatedHost, start_simulated, stop_simulated
from tests.conftest import ADMIN_TOKEN
from tests.e2e.stack import ADMIN, wait_until
from tests.factories import unique

# Where the tests save their screenshots: docs/ui holds the ones the docs show; refresh them
# with MINICLOUD_UI_SCREENSHOTS=docs/ui (by default they go to a scratch directory).
# One client for the tests' own API calls, with a bound generous enough for a loaded machine
# (password hashing and SQLite writes queue behind the other pass's work).
HTTP = httpx.Client(timeout=120)

SCREENSHOTS = Path(os.environ.get("MINICLOUD_UI_SCREENSHOTS",
                                  Path(tempfile.gettempdir()) / "minicloud-ui-screenshots"))


@dataclass
class Login:
    """A user who can log in through the form."""

    user: str
    password: str
    project: str
    project_id: str
    token: str

    @property
    def headers(self) -> dict[str, str]:
        return {"Authorization": f"Bearer {self.token}"}


def make_login(api: str, role: str = "member", project_id: str | None = None) -> Login:
    """A project (new unless given) and a user with ``role`` and a password on it."""
    if project_id is None:
        r = HTTP.post(f"{api}/v1/projects", json={"name": unique("proj")}, headers=ADMIN)
        assert r.status_code == 201, r.text
        project_id = r.json()["id"]
    name, password = unique("user"), "pw-" + unique("secret")
    r = HTTP.post(f"{api}/v1/users", json={"name": name, "password": password,
                                            "project_id": project_id, "role": role},
                   headers=ADMIN)
    assert r.status_code == 201, r.text
    r = HTTP.post(f"{api}/v1/auth/tokens", json={"user": name, "password": password,
                                                  "project": project_id})
    assert r.status_code == 201, r.text
    return Login(name, password, project_id, project_id, r.json()["token"])


@pytest.fixture(scope="module")
def api(live_api: Callable[[int], list[str]]) -> str:
    return live_api(1)[0]


@pytest.fixture(scope="module")
def fleet(api: str, tmp_path_factory: pytest.TempPathFactory) -> Iterator[list[SimulatedHost]]:
    """Two simulated hosts in their own zone."""
    base = AgentSettings(api_url=api, name=unique("uisim"), availability_zone=unique("az"),
                         heartbeat_interval=1, shutdown_timeout=1, console_interval=0.5,
                         long_poll_wait=5, guest_metrics_interval=1)
    root = tmp_path_factory.mktemp("uisim")
    hosts = start_simulated(base, [HostSize(4, 8192, 80), HostSize(4, 8192, 80)], root,
                            admin_token=ADMIN_TOKEN)

    def all_up() -> bool:
        r = HTTP.get(f"{api}/v1/hosts", headers=ADMIN, params={"limit": 1000})
        up = {h["name"] for h in r.json() if h["state"] == "up" and h["resources"]}
        return all(h.name in up for h in hosts)

    wait_until(all_up, 120, "simulated hosts up")
    yield hosts
    stop_simulated(hosts)


@pytest.fixture(scope="session")
def browser() -> Iterator[WebDriver]:
    """Headless Chromium (Debian's chromium and chromium-driver, installed by deploy/test.sh)."""
    binary = shutil.which("chromium")
    driver_path = shutil.which("chromedriver")
    assert binary and driver_path, "chromium and chromium-driver must be installed"
    options = webdriver.ChromeOptions()
    options.binary_location = binary
    for arg in ("--headless=new", "--no-sandbox", "--disable-dev-shm-usage", "--disable-gpu",
                "--window-size=1280,900", "--lang=en-US"):
        options.add_argument(arg)
    driver = webdriver.Chrome(service=Service(driver_path), options=options)
    driver.set_page_load_timeout(120)
    yield driver
    driver.quit()
