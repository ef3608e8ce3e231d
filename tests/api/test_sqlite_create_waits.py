"""SQLite: a create waiting for the process's write gate (another write transaction is open)
holds up nobody else; it is answered once the gate is free.

A create's work runs on the event loop on SQLite (``api.deps.in_unit_of_work``), but only
after a worker thread has taken its connection and the write gate: a create that waited on
the loop itself would stop every other request of the process until the writer ends."""

from __future__ import annotations

import threading
from typing import Any

import httpx
import pytest
from fastapi.testclient import TestClient
from sqlalchemy import text

from tests.catalog_rows import make_image_row
from tests.db import backend
from tests.factories import make_account, unique

pytestmark = [pytest.mark.usefixtures("pool"),
              pytest.mark.skipif(backend() != "sqlite", reason="SQLite's write gate only")]

BOUND = 60.0  # seconds: a liveness bound, far above any answer's time


def test_a_create_waiting_for_the_write_gate_holds_up_no_other_request(
        client: TestClient, admin: dict[str, str], database_url: str) -> None:
    acct = make_account(client, admin)
    image = make_image_row(database_url, acct.project_id)
    engine = client.app.state.engine  # type: ignore[attr-defined]
    answers: dict[str, httpx.Response] = {}

    def create() -> None:
        answers["create"] = client.post("/v1/servers", headers=acct.headers, json={
            "name": unique("vm"), "flavor": "tiny", "image": image})

    with engine.connect() as writer:
        # A write transaction of this process: it holds the write gate until it ends.
        writer.execute(text("UPDATE projects SET name = name WHERE id = :id"),
                       {"id": acct.project_id})
        creating = threading.Thread(target=create)
        creating.start()
        others: dict[str, Any] = {}

        def read() -> None:
            others["flavors"] = client.get("/v1/flavors", headers=acct.headers)
            others["health"] = client.get("/healthz")

        reading = threading.Thread(target=read)
        reading.start()
        reading.join(BOUND)
        assert not reading.is_alive(), "a create waiting for the write gate blocked the API"
        assert others["flavors"].status_code == 200
        assert others["health"].status_code == 200
        assert creating.is_alive() and "create" not in answers  # still waiting for the gate
        writer.commit()
    creating.join(BOUND)
    assert not creating.is_alive()
    r = answers["create"]
    assert r.status_code == 202, r.text
    server = client.get(f"/v1/servers/{r.json()['id']}", headers=acct.headers).json()
    assert server["status"] == "BUILD"
