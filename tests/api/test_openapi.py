"""/openapi.json and /docs describe every operation, its answer and its problem documents."""

from __future__ import annotations

from typing import Any

from fastapi.testclient import TestClient

from api.errors import Problem

PROBLEM_REF = {"$ref": "#/components/schemas/Problem"}


def _operations(spec: dict[str, Any]) -> list[tuple[str, str, dict[str, Any]]]:
    return [(m.upper(), p, op) for p, item in spec["paths"].items() for m, op in item.items()]


def test_every_operation_has_a_summary_and_a_description(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    bare = [f"{m} {p}" for m, p, op in _operations(spec)
            if not op.get("summary") or not op.get("description", "").strip()]
    assert not bare


def test_every_success_answer_has_a_schema(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    missing = []
    for m, p, op in _operations(spec):
        for status, response in op["responses"].items():
            if not status.startswith("2") or status == "204":
                continue
            schemas = [c.get("schema") for c in response.get("content", {}).values()]
            if not schemas or not all(schemas):
                missing.append(f"{m} {p} {status}")
    assert not missing


def test_every_operation_documents_its_problem_documents(client: TestClient) -> None:
    spec = client.get("/openapi.json").json()
    assert spec["components"]["schemas"]["Problem"]["required"] == [
        "type", "title", "status", "detail", "code", "request_id"]
    # FastAPI's default 422 model is not what the API answers; it must not be advertised.
    assert "HTTPValidationError" not in spec["components"]["schemas"]
    wrong = []
    for m, p, op in _operations(spec):
        for status in ("400", "401", "403", "404", "409", "422"):
            content = op["responses"].get(status, {}).get("content", {})
            if content != {"application/problem+json": {"schema": PROBLEM_REF}}:
                wrong.append(f"{m} {p} {status}: {content}")
    assert not wrong


def test_real_problem_documents_match_the_documented_schema(
        client: TestClient, admin: dict[str, str]) -> None:
    for r in (client.get("/v1/servers/nope", headers=admin),
              client.get("/v1/servers"),
              client.post("/v1/projects", headers=admin, json={"name": 1}),
              client.post("/v1/projects", content=b"{",
                          headers=admin | {"content-type": "application/json"})):
        assert r.headers["content-type"].startswith("application/problem+json")
        Problem.model_validate(r.json())


def test_the_docs_page_serves(client: TestClient) -> None:
    r = client.get("/docs")
    assert r.status_code == 200
    assert "/openapi.json" in r.text
