"""Property-based fuzzing of every operation from /openapi.json: never a server error.

Schemathesis generates requests from the published schema (valid and invalid ones) and sends
them with an admin token, so they reach the handlers. Bounded and derandomized: the same
examples on every run. It runs on its own database, because what it creates (projects, rate
cards in odd currencies, ...) must not leak into other tests.
"""

from __future__ import annotations

import os
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import schemathesis
from fastapi.testclient import TestClient
from hypothesis import HealthCheck, Phase, given, settings
from schemathesis.checks import not_a_server_error

from api.config import Settings
from api.main import create_app
from api.migrate import upgrade
from tests.db import fresh_database
from tests.factories import bearer

# Examples per operation: enough to find a 500, few enough for a quick run (raise it for a
# longer hunt: MINICLOUD_FUZZ_EXAMPLES=200).
EXAMPLES = int(os.environ.get("MINICLOUD_FUZZ_EXAMPLES", "8"))
FUZZ_ADMIN_TOKEN = "fuzz-admin-token-000000000000000000000000000000"


@pytest.fixture(scope="module")
def fuzz_app(tmp_path_factory: pytest.TempPathFactory) -> Iterator[TestClient]:
    """The app on a database of its own, its admin bootstrapped (the lifespan runs)."""
    with fresh_database(tmp_path_factory.mktemp("fuzzdb")) as url:
        upgrade(url)
        data = Path(tmp_path_factory.mktemp("fuzzdata"))
        app = create_app(Settings(database_url=url, data_dir=data,
                                  bootstrap_admin_token=FUZZ_ADMIN_TOKEN))
        with TestClient(app) as client:
            yield client
        app.state.engine.dispose()


@pytest.fixture(scope="module")
def api_schema(fuzz_app: TestClient) -> schemathesis.BaseSchema:
    """The published schema, minus the operations that would end the fuzzing session."""
    schema = schemathesis.openapi.from_asgi("/openapi.json", fuzz_app.app)
    # Logging out would revoke the token every later example uses; the long poll waits.
    return schema.exclude(path="/v1/auth/tokens/current", method="DELETE").exclude(
        path="/v1/agent/servers", method="GET")


@pytest.mark.slow
def test_no_operation_answers_a_server_error(api_schema: schemathesis.BaseSchema) -> None:
    failures = []
    count = 0
    statuses: Counter[int] = Counter()
    for result in api_schema.get_all_operations():
        operation = result.ok()  # type: ignore[union-attr]  # an Err (broken schema) fails here
        count += 1

        @given(case=operation.as_strategy())
        @settings(max_examples=EXAMPLES, derandomize=True, deadline=None, database=None,
                  phases=[Phase.explicit, Phase.generate],
                  suppress_health_check=list(HealthCheck))
        def fuzz(case: schemathesis.Case[Any]) -> None:
            response = case.call_and_validate(headers=bearer(FUZZ_ADMIN_TOKEN),
                                              checks=[not_a_server_error])
            statuses[response.status_code] += 1

        try:
            fuzz()
        except KeyboardInterrupt:
            raise
        except BaseException as exc:  # collect every operation's failure, not just the first
            failures.append(f"{operation.label}: {exc!r}"[:600])
    assert count > 50
    # The token works (answers other than 401 prove the handlers were reached).
    assert sum(n for code, n in statuses.items() if code < 300) > 20, statuses
    print(sorted(statuses.items()))
    assert not failures, "\n\n".join(failures)
