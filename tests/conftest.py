"""Shared fixtures: one migrated database per session, the app, an admin, live API servers."""

from __future__ import annotations

import contextlib
import fcntl
import os
import socket
import subprocess
import sys
import tempfile
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient

from api.config import Settings
from api.main import create_app
from api.migrate import upgrade
from tests.db import backend, fresh_database
from tests.factories import Account, bearer, make_account

ADMIN_TOKEN = "mcac_test-admin-token-0123456789abcdef"

# Tests marked ``qemu`` boot real guests on the machine's one libvirtd (and share the guest
# image, the test libvirt hosts' migration ports, /var/lib/minicloud-test/probe): across
# pytest processes (deploy/test.sh runs the SQLite and PostgreSQL passes at once) they take
# this lock, one at a time.
QEMU_LOCK = Path(os.environ.get("MINICLOUD_TEST_QEMU_LOCK")
                 or Path(tempfile.gettempdir()) / "minicloud-test-qemu.lock")


def _lock_log(event: str, nodeid: str, waited: float | None = None) -> None:
    """Append one line to ``MINICLOUD_TEST_QEMU_LOCK_LOG`` (when set): who held the lock when."""
    path = os.environ.get("MINICLOUD_TEST_QEMU_LOCK_LOG")
    if not path:
        return
    stamp = datetime.now(UTC).strftime("%H:%M:%S.%f")[:-3]
    line = f"{stamp} pid={os.getpid()} db={backend()} {event} {nodeid}"
    if waited is not None:
        line += f" waited={waited:.1f}s"
    # One short O_APPEND write per line: lines of the two passes never interleave.
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    try:
        os.write(fd, (line + "\n").encode())
    finally:
        os.close(fd)


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """In the PostgreSQL pass the tests marked ``qemu`` run first (the SQLite pass keeps them
    last): the two passes run at once and share one QEMU lock, so the real guests of one pass
    boot while the other runs its API tests, instead of both queueing at the end."""
    if backend() == "postgresql":
        items.sort(key=lambda item: item.get_closest_marker("qemu") is None)  # stable


# Whether this process holds QEMU_LOCK (flock locks belong to an open file, so a second
# flock from this process would wait for itself).
_qemu_lock_held = False


@contextlib.contextmanager
def _holding_qemu_lock(nodeid: str) -> Iterator[None]:
    global _qemu_lock_held
    if _qemu_lock_held:
        yield
        return
    fd = os.open(QEMU_LOCK, os.O_RDONLY | os.O_CREAT, 0o666)
    try:
        started = time.monotonic()
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            _lock_log("waiting", nodeid)
            fcntl.flock(fd, fcntl.LOCK_EX)
        _lock_log("acquired", nodeid, time.monotonic() - started)
        _qemu_lock_held = True
        try:
            yield
        finally:
            _qemu_lock_held = False
            _lock_log("released", nodeid)
            fcntl.flock(fd, fcntl.LOCK_UN)
    finally:
        os.close(fd)


@pytest.fixture(scope="module", autouse=True)
def _qemu_lock_module(request: pytest.FixtureRequest) -> Iterator[None]:
    """Hold ``QEMU_LOCK`` for the whole of a module marked ``qemu``: its module fixtures (a
    system user, the guest image, uploads) are set up and torn down under the lock too."""
    if request.node.get_closest_marker("qemu") is None:
        yield
        return
    with _holding_qemu_lock(request.node.nodeid):
        yield


@pytest.fixture(autouse=True)
def _qemu_lock(request: pytest.FixtureRequest) -> Iterator[None]:
    """Hold ``QEMU_LOCK`` for the whole of a test marked ``qemu``, set-up and tear-down
    included (already held when its module is marked); other tests do not touch it."""
    if request.node.get_closest_marker("qemu") is None:
        yield
        return
    with _holding_qemu_lock(request.node.nodeid):
        yield


@contextlib.contextmanager
def migrated_database(tmp: Path) -> Iterator[str]:
    """A fresh database at head (``tests.db.fresh_database``, files under ``tmp``)."""
    with fresh_database(tmp) as url:
        upgrade(url)
        yield url


def cloud_settings(database_url: str, data_dir: Path, **overrides: Any) -> Settings:
    """Settings on ``database_url`` and ``data_dir`` with the test admin's bootstrap token
    (``overrides``: any other setting)."""
    return Settings(database_url=database_url, data_dir=data_dir,
                    bootstrap_admin_token=ADMIN_TOKEN, **overrides)


@contextlib.contextmanager
def app_client(settings: Settings) -> Iterator[TestClient]:
    """An HTTP client for an in-process app on ``settings`` (the lifespan bootstraps the
    admin; leaving the block shuts the app down)."""
    with TestClient(create_app(settings)) as c:
        yield c


@dataclass(frozen=True)
class Cloud:
    """An in-process API on a database of its own (``private_cloud``)."""

    settings: Settings
    client: TestClient
    admin: dict[str, str]


@contextlib.contextmanager
def private_cloud(tmp: Path, **overrides: Any) -> Iterator[Cloud]:
    """A fresh database of its own at head, settings on it (``overrides``: any setting) and
    the app's client, for a module whose settings must differ from the session's (e.g. its
    background sweep must leave its servers alone); the database is dropped afterwards."""
    with migrated_database(tmp) as url:
        settings = cloud_settings(url, tmp / "data", **overrides)
        with app_client(settings) as client:
            yield Cloud(settings, client, bearer(ADMIN_TOKEN))


@pytest.fixture(scope="session")
def database_url(tmp_path_factory: pytest.TempPathFactory) -> Iterator[str]:
    """A fresh database at head for this test session."""
    with migrated_database(tmp_path_factory.mktemp("db")) as url:
        yield url


@pytest.fixture(scope="session")
def settings(database_url: str, tmp_path_factory: pytest.TempPathFactory) -> Settings:
    """Settings pointing at the test database and a temporary data directory. The session's
    in-process app never reconciles scaling groups by itself: tests run the passes they
    expect (tests/api/test_scaling_groups.py ``run``), and a pass of its own loop in between
    would act with other settings."""
    return cloud_settings(database_url, tmp_path_factory.mktemp("data"),
                          scaling_interval_seconds=86400.0)


@pytest.fixture(scope="session")
def client(settings: Settings) -> Iterator[TestClient]:
    """An HTTP client for the app (the lifespan bootstraps the admin)."""
    with app_client(settings) as c:
        yield c


@pytest.fixture(scope="session")
def admin(client: TestClient) -> dict[str, str]:
    """Headers of the bootstrapped cloud admin."""
    return bearer(ADMIN_TOKEN)


# Base URL -> PID of each process ``live_api`` started (for memory measurements).
LIVE_API_PIDS: dict[str, int] = {}


@pytest.fixture(scope="session")
def live_api_pids() -> dict[str, int]:
    """Base URL -> PID of the API processes ``live_api`` started."""
    return LIVE_API_PIDS


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


# Every process ``live_api`` started, and whether it lives for the whole session.
_LIVE_APIS: list[tuple[subprocess.Popen[bytes], bool]] = []


def start_live_apis(settings: Settings, count: int, *, session_long: bool = False,
                    data_dir: Path | None = None, **env_vars: str) -> list[str]:
    """Start ``count`` API processes on the test database (``data_dir``, default the test
    settings'; ``env_vars``: more ``MINICLOUD_*`` settings) and wait until they answer."""
    urls = []
    data = data_dir or Path(settings.data_dir)
    for _ in range(count):
        port = _free_port()
        env = dict(os.environ, MINICLOUD_DATABASE_URL=settings.effective_database_url,
                   MINICLOUD_DATA_DIR=str(data), MINICLOUD_LOG_LEVEL="WARNING",
                   MINICLOUD_PUBLIC_URL=f"http://127.0.0.1:{port}", **env_vars)
        log = open(data / f"api-{port}.log", "wb")  # noqa: SIM115
        proc = subprocess.Popen(
            [sys.executable, "-c", "from api.server import run; run()",
             "--host", "127.0.0.1", "--port", str(port), "--no-migrate"],
            env=env, stdout=log, stderr=subprocess.STDOUT)
        _LIVE_APIS.append((proc, session_long))
        url = f"http://127.0.0.1:{port}"
        deadline = time.monotonic() + 30
        while True:
            try:
                if httpx.get(url + "/healthz", timeout=1).status_code == 200:
                    break
            except httpx.TransportError:
                pass
            if time.monotonic() > deadline or proc.poll() is not None:
                raise RuntimeError(f"API on port {port} did not start")
            time.sleep(0.1)
        urls.append(url)
        LIVE_API_PIDS[url] = proc.pid
    return urls


def stop_live_api(url: str) -> None:
    """Stop the API process at ``url`` (started by ``start_live_apis``) now."""
    pid = LIVE_API_PIDS.pop(url)
    for entry in [e for e in _LIVE_APIS if e[0].pid == pid]:
        _LIVE_APIS.remove(entry)
        _stop([entry[0]])


def _stop(procs: list[subprocess.Popen[bytes]]) -> None:
    for p in procs:
        p.terminate()
    for p in procs:
        p.wait(timeout=10)


@pytest.fixture(scope="module", autouse=True)
def _live_apis_end_with_their_module() -> Iterator[None]:
    """Stop the API processes a module started when it ends (idle API processes left running
    for the rest of the session would each keep their background tasks busy)."""
    before = len(_LIVE_APIS)
    yield
    started = _LIVE_APIS[before:]
    del _LIVE_APIS[before:]
    _LIVE_APIS.extend(entry for entry in started if entry[1])
    _stop([proc for proc, session_long in started if not session_long])


@pytest.fixture(scope="session")
def live_api(settings: Settings, client: TestClient) -> Iterator[Callable[[int], list[str]]]:
    """Start N real ``minicloud-api`` processes on loopback, all on the test database; they
    stop when the module that started them ends.

    The ``client`` fixture runs first so the admin exists before any process starts.
    """
    def start(count: int = 1) -> list[str]:
        return start_live_apis(settings, count)

    yield start
    _stop([proc for proc, _ in _LIVE_APIS])
    _LIVE_APIS.clear()


@pytest.fixture(scope="session")
def shared_api(live_api: Callable[[int], list[str]], settings: Settings) -> str:
    """One ``minicloud-api`` process for the whole session, for the modules that need some
    real API process but nothing of their own (each process costs seconds of start-up on a
    loaded machine). Like the in-process app, it leaves scaling passes to the tests."""
    return start_live_apis(settings, 1, session_long=True,
                           MINICLOUD_SCALING_INTERVAL_SECONDS="86400")[0]


@pytest.fixture(scope="session")
def _pool_host(client: TestClient, admin: dict[str, str]) -> dict[str, str]:
    """One large compute host enrolled through the agent API, in zone ``nova``."""
    from tests.agent_factories import enroll_host, inventory

    host = enroll_host(client, admin, name="pool-host")
    r = client.put("/v1/agent/inventory", headers=host.headers,
                   json=inventory(vcpus=4096, ram_mb=64 * 1024 * 1024, disk_gb=1024 * 1024))
    assert r.status_code == 200, r.text
    return host.headers


@pytest.fixture
def pool(client: TestClient, _pool_host: dict[str, str]) -> dict[str, str]:
    """Capacity for servers created through the API: the pool host, freshly heartbeated.

    Returns the pool host's agent headers, so a test can report what its agent would see.
    """
    r = client.post("/v1/agent/heartbeat", headers=_pool_host, json={"observed": []})
    assert r.status_code == 200, r.text
    return _pool_host


# The module's own API (``api``) is defined next to the tests: tests/e2e/conftest.py gives each
# module a process of its own; other modules pick one (e.g. ``shared_api``).

@pytest.fixture(scope="module")
def member(api: str) -> Account:
    """A member of a new project, made through the module's ``api``."""
    with httpx.Client(base_url=api) as c:
        return make_account(c, bearer(ADMIN_TOKEN))


@pytest.fixture(scope="module")
def image_id(api: str, member: Account, tmp_path_factory: pytest.TempPathFactory) -> str:
    """An empty 16 MiB qcow2 image of ``member``'s project, uploaded through ``api``."""
    from tests.e2e.stack import upload_image  # tests.e2e.stack imports this module

    path = tmp_path_factory.mktemp("img") / "disk.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "16M"], check=True)
    return str(upload_image(api, member.headers, path.read_bytes(), "qcow2")["id"])
