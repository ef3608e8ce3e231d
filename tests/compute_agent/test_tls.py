"""``minicloud-api`` serves HTTPS with a certificate from its settings, and the agent enrolls
and heartbeats over it when its CA bundle holds that certificate, and refuses an API whose
certificate it cannot verify. Real API process on loopback; certificates made by openssl."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from fastapi.testclient import TestClient

from api.config import Settings
from compute_agent.agent import ensure_enrolled
from compute_agent.client import AgentApiError, AgentClient
from compute_agent.config import AgentSettings
from tests.conftest import _free_port
from tests.e2e.stack import ADMIN
from tests.factories import unique


def self_signed(directory: Path, name: str) -> tuple[Path, Path]:
    """A self-signed certificate for 127.0.0.1 (and its key), valid for a day."""
    cert, key = directory / f"{name}.pem", directory / f"{name}.key"
    subprocess.run(["openssl", "req", "-x509", "-newkey", "ec", "-pkeyopt",
                    "ec_paramgen_curve:prime256v1", "-nodes", "-days", "1",
                    "-subj", f"/CN={name}", "-addext", "subjectAltName=IP:127.0.0.1",
                    "-keyout", str(key), "-out", str(cert)],
                   check=True, capture_output=True, timeout=30)
    return cert, key


@pytest.fixture(scope="module")
def tls_api(settings: Settings, client: TestClient,
            tmp_path_factory: pytest.TempPathFactory) -> Iterator[tuple[str, Path]]:
    """An HTTPS ``minicloud-api`` on the test database: (base URL, its certificate)."""
    cert, key = self_signed(tmp_path_factory.mktemp("tls"), "minicloud-api")
    port = _free_port()
    env = dict(os.environ, MINICLOUD_DATABASE_URL=settings.effective_database_url,
               MINICLOUD_DATA_DIR=str(settings.data_dir), MINICLOUD_LOG_LEVEL="WARNING",
               MINICLOUD_TLS_CERTFILE=str(cert), MINICLOUD_TLS_KEYFILE=str(key))
    proc = subprocess.Popen([sys.executable, "-c", "from api.server import run; run()",
                             "--host", "127.0.0.1", "--port", str(port), "--no-migrate"],
                            env=env, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    url = f"https://127.0.0.1:{port}"
    trust = ssl.create_default_context(cafile=str(cert))
    deadline = time.monotonic() + 30
    while True:
        try:
            if httpx.get(url + "/healthz", verify=trust, timeout=1).status_code == 200:
                break
        except httpx.TransportError:
            pass
        assert time.monotonic() < deadline and proc.poll() is None, "HTTPS API did not start"
        time.sleep(0.1)
    yield url, cert
    proc.terminate()
    proc.wait(timeout=10)


def test_the_api_serves_https_only(tls_api: tuple[str, Path]) -> None:
    url, _ = tls_api
    with pytest.raises(httpx.TransportError):
        httpx.get(url.replace("https://", "http://") + "/healthz", timeout=5)


def test_the_agent_enrolls_and_beats_over_https_with_its_ca_bundle(
    tls_api: tuple[str, Path], tmp_path: Path
) -> None:
    url, cert = tls_api
    settings = AgentSettings(api_url=url, ca_bundle=cert, name=unique("tls"),
                             state_dir=tmp_path / "state", libvirt_uri="test:///default")
    cred = ensure_enrolled(settings, "qemu", admin_token=ADMIN["Authorization"][7:])
    with AgentClient(url, cred.credential, verify=ssl.create_default_context(
            cafile=str(cert))) as agent:
        agent.heartbeat([])
    r = httpx.get(f"{url}/v1/hosts/{cred.host_id}", headers=ADMIN,
                  verify=ssl.create_default_context(cafile=str(cert)))
    assert (r.status_code, r.json()["name"], r.json()["state"]) == (200, settings.name, "up")


def test_the_agent_refuses_an_api_it_cannot_verify(
    tls_api: tuple[str, Path], tmp_path: Path
) -> None:
    url, _ = tls_api
    other, _ = self_signed(tmp_path, "someone-else")
    for bundle in (other, None):  # a foreign CA, and the default trust store
        settings = AgentSettings(api_url=url, ca_bundle=bundle, name=unique("tls"),
                                 state_dir=tmp_path / "state", libvirt_uri="test:///default")
        with pytest.raises(AgentApiError) as err:
            ensure_enrolled(settings, "qemu", admin_token=ADMIN["Authorization"][7:])
        assert err.value.status == 0 and "CERTIFICATE_VERIFY_FAILED" in str(err.value)
        assert not (tmp_path / "state" / "credential.json").exists()
