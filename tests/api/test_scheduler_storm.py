"""Scheduler acceptance through the real API: storms of ``POST /v1/servers`` on real processes.

The module runs on a database of its own (the session database holds the shared pool host and
other tests' hosts, which would blur the exact counts) served by real ``minicloud-api``
processes: one on SQLite, two on PostgreSQL. Hosts are enrolled and report inventory and
heartbeats through the agent API. Each test retires (disables) its hosts when it ends, so the
next test's refusals count them exactly as ``disabled``.
"""

from __future__ import annotations

import itertools
import os
import subprocess
import sys
import time
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from api.config import Settings
from api.db import make_engine, make_sessionmaker
from api.hosts.service import capacity
from api.migrate import upgrade
from api.models import Allocation, Inventory
from tests.agent_factories import EnrolledHost, enroll_host, inventory
from tests.conftest import _free_port
from tests.db import backend, fresh_database
from tests.factories import Account, bearer, make_account, make_flavor, make_image, unique

ADMIN_TOKEN = "mcac_storm-admin-token-0123456789abcdef"


@dataclass
class Cloud:
    """Real API processes on a database of this module's own."""

    database_url: str
    urls: list[str]
    clients: list[httpx.Client]
    admin: dict[str, str] = field(default_factory=lambda: bearer(ADMIN_TOKEN))
    hosts: list[EnrolledHost] = field(default_factory=list)

    @property
    def api(self) -> httpx.Client:
        """A client on the first API process (for set-up and checks)."""
        return self.clients[0]


def _start_api(url: str, data_dir: Path, port: int) -> subprocess.Popen[bytes]:
    env = dict(os.environ, MINICLOUD_DATABASE_URL=url, MINICLOUD_DATA_DIR=str(data_dir),
               MINICLOUD_BOOTSTRAP_ADMIN_TOKEN=ADMIN_TOKEN, MINICLOUD_LOG_LEVEL="WARNING",
               # A slow shared machine must not let a host go down in the middle of a storm.
               MINICLOUD_HOST_DOWN_AFTER_SECONDS="3600")
    log = open(data_dir / f"api-{port}.log", "wb")  # noqa: SIM115
    proc = subprocess.Popen(
        [sys.executable, "-c", "from api.server import run; run()",
         "--host", "127.0.0.1", "--port", str(port), "--no-migrate"],
        env=env, stdout=log, stderr=subprocess.STDOUT)
    deadline = time.monotonic() + 60
    while True:
        try:
            if httpx.get(f"http://127.0.0.1:{port}/healthz", timeout=1).status_code == 200:
                return proc
        except httpx.TransportError:
            pass
        if time.monotonic() > deadline or proc.poll() is not None:
            proc.kill()
            raise RuntimeError(f"API on port {port} did not start")
        time.sleep(0.1)


@pytest.fixture(scope="module")
def cloud(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Cloud]:
    """A fresh database at head served by 1 (SQLite) or 2 (PostgreSQL) API processes."""
    count = 2 if backend() == "postgresql" else 1
    tmp = tmp_path_factory.mktemp("storm")
    with fresh_database(tmp) as url:
        upgrade(url)
        procs: list[subprocess.Popen[bytes]] = []
        clients: list[httpx.Client] = []
        try:
            # One after the other: the first bootstraps the admin before the second starts.
            for _ in range(count):
                port = _free_port()
                procs.append(_start_api(url, tmp, port))
                clients.append(httpx.Client(
                    base_url=f"http://127.0.0.1:{port}", timeout=120,
                    limits=httpx.Limits(max_connections=64, max_keepalive_connections=64)))
            yield Cloud(url, [str(c.base_url) for c in clients], clients)
        finally:
            for c in clients:
                c.close()
            for p in procs:
                p.terminate()
            for p in procs:
                p.wait(timeout=20)


@pytest.fixture
def hosts(cloud: Cloud) -> Iterator[list[EnrolledHost]]:
    """The hosts this test enrolls (append to it); disabled ("retired") when the test ends."""
    mine: list[EnrolledHost] = []
    yield mine
    for host in mine:
        r = cloud.api.patch(f"/v1/hosts/{host.id}", headers=cloud.admin,
                            json={"enabled": False, "disabled_reason": "retired by a test"})
        assert r.status_code == 200, r.text


def add_host(cloud: Cloud, mine: list[EnrolledHost], *, vcpus: int, ram_mb: int,
             disk_gb: int, zone: str = "nova") -> EnrolledHost:
    """Enroll a host through the agent API, report its inventory and a heartbeat."""
    host = enroll_host(cloud.api, cloud.admin, name=unique("storm"), availability_zone=zone)
    r = cloud.api.put("/v1/agent/inventory", headers=host.headers,
                      json=inventory(vcpus=vcpus, ram_mb=ram_mb, disk_gb=disk_gb))
    assert r.status_code == 200, r.text
    r = cloud.api.post("/v1/agent/heartbeat", headers=host.headers, json={"observed": []})
    assert r.status_code == 200, r.text
    mine.append(host)
    return host


def retired(cloud: Cloud, mine: list[EnrolledHost]) -> int:
    """How many hosts of earlier tests (all disabled) the pool holds besides ``mine``."""
    r = cloud.api.get("/v1/hosts", headers=cloud.admin)
    assert r.status_code == 200, r.text
    others = [h for h in r.json() if h["id"] not in {m.id for m in mine}]
    assert all(not h["enabled"] for h in others)
    return len(others)


def tenant(cloud: Cloud) -> tuple[Account, dict[str, Any]]:
    """A member of a new project with a quota far above any storm, and an active image."""
    acct = make_account(cloud.api, cloud.admin)
    r = cloud.api.put(f"/v1/quotas/{acct.project_id}", headers=cloud.admin, json={
        "instances": 100_000, "vcpus": 1_000_000, "ram_mb": 1_000_000_000,
        "disk_gb": 1_000_000_000})
    assert r.status_code == 200, r.text
    return acct, make_image(cloud.api, acct.headers)


def storm(cloud: Cloud, headers: dict[str, str], bodies: list[dict[str, Any]],
          workers: int = 32) -> list[httpx.Response]:
    """POST every body to /v1/servers concurrently, spread over the API processes."""
    targets = itertools.cycle(cloud.clients)
    jobs = [(next(targets), body) for body in bodies]
    with ThreadPoolExecutor(max_workers=workers) as pool:
        return list(pool.map(lambda job: job[0].post("/v1/servers", headers=headers,
                                                     json=job[1]), jobs))


def allocated_by_host(cloud: Cloud) -> tuple[dict[tuple[str, str], int],
                                             dict[tuple[str, str], int]]:
    """(allocated, capacity) per (host id, class), recomputed through a session."""
    engine = make_engine(cloud.database_url)
    settings = Settings(database_url=cloud.database_url)
    try:
        with make_sessionmaker(engine)() as s:
            used = {(h, rc): int(n) for h, rc, n in s.execute(
                select(Allocation.host_id, Allocation.resource_class, func.sum(Allocation.used))
                .group_by(Allocation.host_id, Allocation.resource_class))}
            caps = {(inv.host_id, inv.resource_class): capacity(inv, settings)
                    for inv in s.scalars(select(Inventory))}
    finally:
        engine.dispose()
    return used, caps


def codes(responses: list[httpx.Response]) -> Counter[int]:
    """How many responses of each status."""
    return Counter(r.status_code for r in responses)


def test_200_concurrent_creates_onto_a_pool_that_fits_exactly_100(
        cloud: Cloud, hosts: list[EnrolledHost]) -> None:
    # Flavor 2 vCPU / 1024 MB / 10 GB. Ten hosts that fit exactly 10 each, each limited by
    # one class only (the others stay far from full at 10 servers):
    #   4 RAM-bound:  MEMORY_MB 10240 * 1.0 / 1024 = 10  (VCPU 64 * 4.0 = 256, disk 1000)
    #   3 disk-bound: DISK_GB   100   * 1.0 / 10   = 10  (VCPU 256, RAM 65536)
    #   3 VCPU-bound: VCPU      5     * 4.0 / 2    = 10  (RAM 65536, disk 1000)
    for _ in range(4):
        add_host(cloud, hosts, vcpus=64, ram_mb=10240, disk_gb=1000)
    for _ in range(3):
        add_host(cloud, hosts, vcpus=64, ram_mb=65536, disk_gb=100)
    for _ in range(3):
        add_host(cloud, hosts, vcpus=5, ram_mb=65536, disk_gb=1000)
    old = retired(cloud, hosts)
    acct, image = tenant(cloud)
    flavor = make_flavor(cloud.api, cloud.admin, vcpus=2, ram_mb=1024, disk_gb=10)

    responses = storm(cloud, acct.headers, [
        {"name": f"s{k}", "flavor": flavor["id"], "image": image["id"]} for k in range(200)])

    assert codes(responses) == {202: 100, 409: 100}, [r.text for r in responses
                                                     if r.status_code not in (202, 409)]
    # Every refusal happened on a full pool and explains all of it, host by host class.
    expected = {"not_enough_MEMORY_MB": 4, "not_enough_DISK_GB": 3, "not_enough_VCPU": 3}
    if old:
        expected["disabled"] = old
    for r in responses:
        if r.status_code == 409:
            problem = r.json()
            assert r.headers["content-type"].startswith("application/problem+json")
            assert problem["code"] == "no_valid_host"
            assert problem["hosts"] == 10 + old
            assert problem["refusals"] == expected
            assert sum(problem["refusals"].values()) == problem["hosts"]
            assert "per_host" not in problem  # a tenant never sees host names
    placed = Counter(r.json()["id"] for r in responses if r.status_code == 202)
    assert len(placed) == 100

    # Within capacity everywhere, recomputed from the allocation rows: full, never over.
    used, caps = allocated_by_host(cloud)
    for host in hosts:
        for rc in ("VCPU", "MEMORY_MB", "DISK_GB"):
            assert used.get((host.id, rc), 0) <= caps[(host.id, rc)], (host.name, rc)
        assert used[(host.id, "MEMORY_MB")] == 10 * 1024  # ten servers on every host
    # The admin view agrees with the rows.
    views = {h["id"]: h for h in cloud.api.get("/v1/hosts", headers=cloud.admin).json()}
    for host in hosts:
        for rc in ("VCPU", "MEMORY_MB", "DISK_GB"):
            assert views[host.id]["resources"][rc]["allocated"] == used[(host.id, rc)]
        assert views[host.id]["servers"] == 10


def test_anti_affinity_storm_places_one_member_per_host(
        cloud: Cloud, hosts: list[EnrolledHost]) -> None:
    # Ten roomy hosts; 20 concurrent members of one hard anti-affinity group: the group fits
    # exactly once per host, the other ten are refused by the group filter on every host.
    mine = [add_host(cloud, hosts, vcpus=64, ram_mb=65536, disk_gb=1000) for _ in range(10)]
    old = retired(cloud, hosts)
    acct, image = tenant(cloud)
    r = cloud.api.post("/v1/server-groups", headers=acct.headers,
                       json={"name": unique("grp"), "policy": "anti-affinity"})
    assert r.status_code == 201, r.text
    group = r.json()["id"]

    responses = storm(cloud, acct.headers, [
        {"name": f"a{k}", "flavor": "tiny", "image": image["id"], "server_group": group}
        for k in range(20)], workers=20)

    assert codes(responses) == {202: 10, 409: 10}, [r.text for r in responses]
    expected = {"anti_affinity": 10} | ({"disabled": old} if old else {})
    for r in responses:
        if r.status_code == 409:
            assert r.json()["code"] == "no_valid_host"
            assert r.json()["refusals"] == expected
    # Ten different hosts, as the admin listing shows them.
    names = {h.name for h in mine}
    r = cloud.api.get("/v1/servers", headers=cloud.admin,
                      params={"all_projects": "true", "limit": 1000})
    members = [s for s in r.json()["servers"] if s["server_group_id"] == group]
    assert len(members) == 10
    assert {s["host"] for s in members} == names
    r = cloud.api.get(f"/v1/server-groups/{group}", headers=acct.headers)
    assert len(r.json()["members"]) == 10


def create(cloud: Cloud, acct: Account, flavor: str, image: str,
           client: httpx.Client | None = None, **extra: Any) -> httpx.Response:
    """One create through the API (default: the first process)."""
    return (client or cloud.api).post("/v1/servers", headers=acct.headers, json={
        "name": unique("vm"), "flavor": flavor, "image": image, **extra})


def test_admin_ratio_and_enable_changes_take_effect_on_the_next_create(
        cloud: Cloud, hosts: list[EnrolledHost]) -> None:
    # One host of 4 physical vCPUs: at the pool ratio 4.0 it has room for 16 vCPUs; the
    # flavor takes 4 (a server may not exceed the host's physical max_unit of 4).
    host = add_host(cloud, hosts, vcpus=4, ram_mb=65536, disk_gb=1000)
    old = retired(cloud, hosts)
    acct, image = tenant(cloud)
    flavor = make_flavor(cloud.api, cloud.admin, vcpus=4, ram_mb=512, disk_gb=1)["id"]
    other = {"disabled": old} if old else {}
    # Each check runs on every API process: their snapshot caches must all see the change.
    for client in cloud.clients:
        assert create(cloud, acct, flavor, image["id"], client).status_code == 202
    used = 4 * len(cloud.clients)

    # Ratio 4.0 -> 1.0: capacity 4 vCPUs, all of it already allocated.
    r = cloud.api.patch(f"/v1/hosts/{host.id}", headers=cloud.admin,
                        json={"allocation_ratios": {"VCPU": 1.0}})
    assert r.status_code == 200, r.text
    for client in cloud.clients:
        r = create(cloud, acct, flavor, image["id"], client)
        assert r.status_code == 409, r.text
        assert r.json()["refusals"] == {"not_enough_VCPU": 1} | other

    # Back to 8.0 (32 vCPUs): room again.
    r = cloud.api.patch(f"/v1/hosts/{host.id}", headers=cloud.admin,
                        json={"allocation_ratios": {"VCPU": 8.0}})
    assert r.status_code == 200, r.text
    for client in cloud.clients:
        assert create(cloud, acct, flavor, image["id"], client).status_code == 202
        used += 4
    assert used <= 32

    # Disabled: refused by name; enabled again: placed.
    r = cloud.api.patch(f"/v1/hosts/{host.id}", headers=cloud.admin,
                        json={"enabled": False, "disabled_reason": "maintenance"})
    assert r.status_code == 200, r.text
    for client in cloud.clients:
        r = create(cloud, acct, flavor, image["id"], client)
        assert r.status_code == 409, r.text
        assert r.json()["refusals"] == {"disabled": 1 + old}
    r = cloud.api.patch(f"/v1/hosts/{host.id}", headers=cloud.admin, json={"enabled": True})
    assert r.status_code == 200, r.text
    for client in cloud.clients:
        assert create(cloud, acct, flavor, image["id"], client).status_code == 202


def test_simulate_agrees_with_the_create_that_follows(
        cloud: Cloud, hosts: list[EnrolledHost]) -> None:
    # Four identical hosts: every decision is a tie, broken by the request id, so agreement
    # is a real check of replayability, not luck of a single best host.
    for _ in range(4):
        add_host(cloud, hosts, vcpus=8, ram_mb=4096, disk_gb=100)
    old = retired(cloud, hosts)
    acct, image = tenant(cloud)
    flavor = make_flavor(cloud.api, cloud.admin, vcpus=1, ram_mb=2048, disk_gb=10)
    # 4 hosts x 2 servers of 2048 MB fit; the ninth create is refused.
    for k in range(9):
        rid = f"sim-{unique('r')}-{k}"
        for client in cloud.clients:
            sim = client.post("/v1/scheduler/simulate", headers=cloud.admin, json={
                "flavor": flavor["id"], "image": image["id"], "request_id": rid})
            assert sim.status_code == 200, sim.text
        body = sim.json()
        r = cloud.clients[k % len(cloud.clients)].post(
            "/v1/servers", headers=acct.headers | {"X-Request-Id": rid},
            json={"name": f"v{k}", "flavor": flavor["id"], "image": image["id"]})
        if body["fits"]:
            assert r.status_code == 202, r.text
            shown = cloud.api.get(f"/v1/servers/{r.json()['id']}", headers=cloud.admin)
            assert shown.json()["host"] == body["host"]["name"]
        else:
            assert k == 8
            assert r.status_code == 409, r.text
            assert r.json()["refusals"] == body["refusals"]
            assert r.json()["hosts"] == body["hosts"] == 4 + old
            assert r.json()["detail"] == body["detail"]
    assert not body["fits"]
