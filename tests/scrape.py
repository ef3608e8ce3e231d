"""Reading a live API process's ``/metrics`` with prometheus-client's own parser."""

from __future__ import annotations

import httpx
from prometheus_client.parser import text_string_to_metric_families

from tests.conftest import ADMIN_TOKEN
from tests.factories import bearer

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]

LONG_POLL = "/v1/agent/servers"


def parse(text: str) -> Samples:
    """Every sample of an exposition by (name, sorted labels)."""
    return {(s.name, tuple(sorted(s.labels.items()))): s.value
            for family in text_string_to_metric_families(text) for s in family.samples}


def scrape(url: str) -> Samples:
    """Every sample of one API process's ``/metrics`` (as the admin)."""
    r = httpx.get(f"{url}/metrics", headers=bearer(ADMIN_TOKEN), timeout=30)
    assert r.status_code == 200, r.text
    return parse(r.text)


def value(samples: Samples, name: str, **labels: str) -> float:
    """One sample's value (0 when absent)."""
    return samples.get((name, tuple(sorted(labels.items()))), 0.0)


def total(samples: Samples, name: str, **labels: str) -> float:
    """The sum of every sample of ``name`` whose labels include ``labels``."""
    return sum(v for (n, ls), v in samples.items()
               if n == name and set(labels.items()) <= set(ls))


def long_poll_statements(samples: Samples) -> float:
    """SQL statements the agent long-poll route has sent in this process."""
    return value(samples, "minicloud_db_statements_total", route=LONG_POLL)
