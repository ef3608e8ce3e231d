"""POST /v1/scheduler/simulate through HTTP: fit, where, why, how many more; agrees with place().

Hosts are inserted directly, each test in an availability zone of its own so the shared test
database's other hosts stay out of the answers.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest
from fastapi.testclient import TestClient
from sqlalchemy.orm import Session, sessionmaker

from api.config import Settings
from api.db import make_engine, make_sessionmaker
from api.scheduler.placement import NoValidHost, place
from tests.factories import make_account, make_flavor, make_image, unique
from tests.scheduler.db_factories import Catalog, make_catalog, make_host, make_server, spec_for


@pytest.fixture(scope="module")
def maker(settings: Settings) -> Iterator[sessionmaker[Session]]:
    """Sessions on the test database (for inserting hosts and calling place())."""
    engine = make_engine(settings.effective_database_url)
    yield make_sessionmaker(engine)
    engine.dispose()


@pytest.fixture
def catalog(maker: sessionmaker[Session]) -> Catalog:
    """A flavor of 1 vCPU / 1024 MB / 10 GB, an image, a project."""
    with maker.begin() as s:
        return make_catalog(s)


def simulate(client: TestClient, admin: dict[str, str], **body: object) -> dict[str, Any]:
    r = client.post("/v1/scheduler/simulate", json=body, headers=admin)
    assert r.status_code == 200, r.text
    result: dict[str, Any] = r.json()
    return result


def test_simulate_agrees_with_the_placement_that_follows(
        client: TestClient, admin: dict[str, str], settings: Settings,
        maker: sessionmaker[Session], catalog: Catalog) -> None:
    zone = unique("az")
    with maker.begin() as s:
        hosts = [make_host(s, zone=zone) for _ in range(6)]  # equal: the seed decides
    for seed in ("seed-a", "seed-b", "seed-c"):
        answer = simulate(client, admin, flavor=catalog.flavor_id, availability_zone=zone,
                          request_id=seed)
        assert answer["fits"] is True
        with maker() as s:
            sid = make_server(s, catalog)
            result = place(s, settings, spec_for(sid, catalog, zone=zone), request_id=seed)
            s.commit()
        assert answer["host"] == {"id": result.host_id, "name": result.host_name}
        assert result.host_id in hosts


def test_simulate_explains_a_refusal_like_place_does(
        client: TestClient, admin: dict[str, str], settings: Settings,
        maker: sessionmaker[Session], catalog: Catalog) -> None:
    zone = unique("az")
    with maker.begin() as s:
        small = make_host(s, zone=zone, ram_mb=512, name=unique("small"))
        make_host(s, zone=zone, enabled=False)
    answer = simulate(client, admin, flavor=catalog.flavor_id, availability_zone=zone)
    assert answer["fits"] is False and answer["host"] is None
    with maker() as s:
        sid = make_server(s, catalog)
        with pytest.raises(NoValidHost) as refused:
            place(s, settings, spec_for(sid, catalog, zone=zone), request_id="r")
        s.rollback()
    # Same snapshot arithmetic: hosts of other zones count as "availability_zone" in both.
    assert answer["refusals"] == refused.value.extra["refusals"]
    assert answer["refusals_by_filter"] == refused.value.extra["refusals_by_filter"]
    assert answer["detail"] == refused.value.detail
    per_host = answer["per_host"]
    assert isinstance(per_host, list)
    assert {p["host_id"]: p["reason"] for p in per_host}[small] == "not_enough_MEMORY_MB"


def test_simulate_counts_how_many_more_fit(client: TestClient, admin: dict[str, str],
                                           maker: sessionmaker[Session],
                                           catalog: Catalog) -> None:
    zone = unique("az")
    with maker.begin() as s:
        # a: RAM 10240 / 1024 = 10, VCPU 4 * 4.0 / 1 = 16, DISK 200 / 10 = 20 -> 10
        a = make_host(s, zone=zone, name=unique("a"))
        # b: VCPU 1 * 4.0 / 1 = 4 is the limit -> 4
        make_host(s, zone=zone, vcpus=1)
        make_host(s, zone=zone, enabled=False)  # disabled: 0
    answer = simulate(client, admin, flavor=catalog.flavor_id, availability_zone=zone)
    capacity = answer["capacity"]
    assert capacity["additional"] == 14
    assert [h["count"] for h in capacity["by_host"]] == [10, 4]
    assert capacity["by_host"][0]["host_id"] == a
    # Raw sizes instead of a flavor: 2048 MB -> a: 10240 / 2048 = 5; b: 5 by RAM, 4 by VCPU.
    answer = simulate(client, admin, vcpus=1, ram_mb=2048, disk_gb=10, availability_zone=zone)
    assert answer["capacity"]["additional"] == 9


def test_simulate_for_a_tenant_names_no_host_and_validates(
        client: TestClient, admin: dict[str, str], pool: dict[str, str]) -> None:
    member = make_account(client, admin, role="member")
    flavor = make_flavor(client, admin)
    r = client.post("/v1/scheduler/simulate", json={"flavor": flavor["id"]},
                    headers=member.headers)
    assert r.status_code == 200, r.text
    answer = r.json()
    assert answer["fits"] is True and answer["candidates"] >= 1
    # The same decision an admin sees, without any host's identity.
    assert answer["host"] is None and answer["per_host"] == [] and answer["top"] == []
    assert answer["capacity"]["by_host"] == [] and answer["capacity"]["additional"] >= 1
    assert "scores best" not in answer["detail"]
    seen_by_admin = client.post("/v1/scheduler/simulate", json={"flavor": flavor["id"]},
                                headers=admin).json()
    assert seen_by_admin["host"] is not None and seen_by_admin["top"]
    # Only admins ask as another project.
    r = client.post("/v1/scheduler/simulate",
                    json={"flavor": flavor["id"], "project_id": member.project_id},
                    headers=member.headers)
    assert (r.status_code, r.json()["code"]) == (403, "admin_required")
    r = client.post("/v1/scheduler/simulate", json={"vcpus": 1}, headers=admin)
    assert (r.status_code, r.json()["code"]) == (422, "invalid_input")
    r = client.post("/v1/scheduler/simulate", json={"flavor": "no-such"}, headers=admin)
    assert (r.status_code, r.json()["code"]) == (404, "flavor_not_found")


# (reference that belongs to project A, the code a create by project B gets for it)
PRIVATE_TO_A = [
    ("flavor", "flavor_not_found"),
    ("image", "image_not_found"),
    ("server_group", "server_group_not_found"),
]


@pytest.mark.parametrize(("field", "code"), PRIVATE_TO_A)
def test_simulate_resolves_references_with_the_visibility_of_a_create(
        client: TestClient, admin: dict[str, str], field: str, code: str) -> None:
    a = make_account(client, admin)
    b = make_account(client, admin)
    private_flavor = make_flavor(client, admin, is_public=False)
    r = client.post(f"/v1/flavors/{private_flavor['id']}/access/{a.project_id}", headers=admin)
    assert r.status_code == 200, r.text
    r = client.post("/v1/server-groups", json={"name": unique("g"), "policy": "affinity"},
                    headers=a.headers)
    assert r.status_code == 201, r.text
    of_a = {"flavor": private_flavor["id"], "image": make_image(client, a.headers)["id"],
            "server_group": r.json()["id"]}
    # Everything else public, so only ``field`` can be refused.
    public = {"flavor": make_flavor(client, admin)["id"],
              "image": make_image(client, admin, visibility="public")["id"]}
    body = public | {field: of_a[field]}

    # Project B creating with A's private reference: 404, nothing more said.
    created = client.post("/v1/servers", json={"name": unique("s"), **body}, headers=b.headers)
    assert (created.status_code, created.json()["code"]) == (404, code)
    # Simulating as B gets the same answer as B's create.
    r = client.post("/v1/scheduler/simulate", json={**body, "project_id": b.project_id},
                    headers=admin)
    assert (r.status_code, r.json()["code"]) == (404, code)
    # ... and as B itself.
    r = client.post("/v1/scheduler/simulate", json=body, headers=b.headers)
    assert (r.status_code, r.json()["code"]) == (404, code)
    # As A, the reference resolves and the pool is evaluated.
    r = client.post("/v1/scheduler/simulate", json={**body, "project_id": a.project_id},
                    headers=admin)
    assert r.status_code == 200, r.text
    answer = r.json()
    # Each refused host counts once by reason and once for the filter that refused it.
    refused = answer["hosts"] - answer["candidates"]
    assert sum(answer["refusals"].values()) == refused
    assert sum(answer["refusals_by_filter"].values()) == refused


def test_simulate_without_a_project_joins_only_the_callers_own_groups(
        client: TestClient, admin: dict[str, str]) -> None:
    a = make_account(client, admin)
    r = client.post("/v1/server-groups", json={"name": unique("g"), "policy": "affinity"},
                    headers=a.headers)
    group = r.json()["id"]
    flavor = make_flavor(client, admin)["id"]
    # An admin's create may not join another project's group either.
    r = client.post("/v1/scheduler/simulate", json={"flavor": flavor, "server_group": group},
                    headers=admin)
    assert (r.status_code, r.json()["code"]) == (404, "server_group_not_found")
    r = client.post("/v1/scheduler/simulate", json={"flavor": flavor, "project_id": "nope"},
                    headers=admin)
    assert (r.status_code, r.json()["code"]) == (404, "project_not_found")
