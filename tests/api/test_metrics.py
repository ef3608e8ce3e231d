"""GET /metrics: the Prometheus exposition, parsed with prometheus-client's own parser."""

from __future__ import annotations

import pytest
from fastapi.testclient import TestClient
from prometheus_client.parser import text_string_to_metric_families

from tests.agent_factories import observe
from tests.catalog_rows import make_image_row
from tests.factories import make_account, unique

pytestmark = pytest.mark.usefixtures("pool")


Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def scrape(client: TestClient, admin: dict[str, str]) -> Samples:
    """Every sample of ``/metrics`` by (name, sorted labels)."""
    r = client.get("/metrics", headers=admin)
    assert r.status_code == 200, r.text
    assert r.headers["content-type"].startswith("text/plain")
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(r.text) for s in family.samples}


def value(samples: Samples, name: str, **labels: str) -> float:
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def test_metrics_need_an_admin(client: TestClient, admin: dict[str, str]) -> None:
    assert client.get("/metrics").json()["code"] == "missing_token"
    member = make_account(client, admin)
    r = client.get("/metrics", headers=member.headers)
    assert (r.status_code, r.json()["code"]) == (403, "admin_required")


def test_creates_refusals_and_ledger_writes_move_the_counters(
        client: TestClient, admin: dict[str, str], database_url: str,
        pool: dict[str, str]) -> None:
    acct = make_account(client, admin)
    before = scrape(client, admin)

    image = make_image_row(database_url, acct.project_id)
    r = client.post("/v1/servers", headers=acct.headers,
                    json={"name": unique("vm"), "flavor": "tiny", "image": image})
    assert r.status_code == 202, r.text
    observe(client, pool, r.json()["id"], "running")  # the agent saw it boot: billing starts
    refused = client.post("/v1/servers", headers=acct.headers,
                          json={"name": unique("vm"), "flavor": "tiny", "image": image,
                                "availability_zone": unique("nowhere")})
    assert (refused.status_code, refused.json()["code"]) == (409, "no_valid_host")
    reasons = refused.json()["refusals"]

    after = scrape(client, admin)
    delta = {key: after[key] - before.get(key, 0.0) for key in after}
    assert value(delta, "minicloud_placement_decisions_total", outcome="host_found") == 1
    assert value(delta, "minicloud_placement_decisions_total", outcome="no_valid_host") == 1
    for reason, hosts in reasons.items():
        assert value(delta, "minicloud_placement_refusals_total", reason=reason) >= hosts
    assert value(delta, "minicloud_ledger_writes_total", kind="created") == 1
    assert value(delta, "minicloud_ledger_writes_total", kind="running") == 1
    # One series per route template, whatever the ids in the path.
    assert value(delta, "minicloud_http_requests_total", method="POST", route="/v1/servers",
                 status="2xx") == 1
    assert value(delta, "minicloud_http_requests_total", method="POST", route="/v1/servers",
                 status="4xx") == 1
    assert value(delta, "minicloud_http_request_duration_seconds_count", method="POST",
                 route="/v1/servers") == 2
    assert value(delta, "minicloud_http_requests_total", method="POST", status="2xx",
                 route="/v1/agent/servers/{server_id}/observations") == 1
    assert not any(r.json()["id"] in str(labels) for _, labels in after)
    # Gauges: the pool host heartbeated just now; the scrape itself holds a connection.
    assert value(after, "minicloud_hosts", state="up", enabled="true") >= 1
    assert value(after, "minicloud_db_pool_in_use") >= 1
    assert value(after, "minicloud_db_pool_size") > 0
    assert ("minicloud_agent_long_polls_waiting", ()) in after
    # The event loop's lag is sampled from the process's start on.
    assert value(after, "minicloud_event_loop_lag_seconds_count") >= 1
    assert value(after, "minicloud_event_loop_lag_seconds_bucket", le="+Inf") == \
        value(after, "minicloud_event_loop_lag_seconds_count")
