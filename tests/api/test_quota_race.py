"""Acceptance: 20 concurrent creates against an instance quota of 5 accept exactly 5.

Real API processes on the test database (one on SQLite, two on PostgreSQL with requests
alternating between them), real concurrent HTTP clients: the quota check is atomic only if
the project lock serializes creates across threads and processes.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from threading import Barrier

import httpx
import pytest
from fastapi.testclient import TestClient

from tests.catalog_rows import make_image_row
from tests.db import backend
from tests.factories import make_account, unique

# Servers created through the API need a host to be placed on.
pytestmark = pytest.mark.usefixtures("pool")

ATTEMPTS, LIMIT = 20, 5


def test_concurrent_creates_never_exceed_the_instance_quota(
    client: TestClient, admin: dict[str, str], database_url: str,
    live_api: Callable[[int], list[str]],
) -> None:
    acct = make_account(client, admin)
    r = client.put(f"/v1/quotas/{acct.project_id}", json={"instances": LIMIT}, headers=admin)
    assert r.status_code == 200, r.text
    image = make_image_row(database_url, acct.project_id)
    urls = live_api(1 if backend() == "sqlite" else 2)
    start = Barrier(ATTEMPTS)

    def create(i: int) -> tuple[int, str | None]:
        with httpx.Client(base_url=urls[i % len(urls)], headers=acct.headers,
                          timeout=60) as http:
            body = {"name": unique("race"), "flavor": "tiny", "image": image}
            start.wait()  # release all requests together
            resp = http.post("/v1/servers", json=body)
            code = resp.json().get("code") if resp.status_code != 202 else None
            return resp.status_code, code

    with ThreadPoolExecutor(max_workers=ATTEMPTS) as pool:
        results = Counter(pool.map(create, range(ATTEMPTS)))

    assert results == {(202, None): LIMIT, (409, "quota_exceeded"): ATTEMPTS - LIMIT}
    quota = client.get(f"/v1/quotas/{acct.project_id}", headers=acct.headers).json()
    # tiny = 1 vCPU, 512 MB RAM, 1 GB disk
    used = {k: v for k, v in quota["usage"].items() if k not in ("images", "image_bytes")}
    assert used == {"instances": LIMIT, "vcpus": LIMIT, "ram_mb": 512 * LIMIT,
                    "disk_gb": LIMIT}
    listed = client.get("/v1/servers?limit=1000", headers=acct.headers).json()["servers"]
    assert len(listed) == LIMIT
