"""The error-code registry (api/error_codes.py) is complete, agrees with the code that raises
each code, and is the error table of docs/api.md."""

from __future__ import annotations

import ast
import importlib
import pkgutil
import re
from collections.abc import Iterator
from pathlib import Path

from fastapi.testclient import TestClient

import api
from api.error_codes import ERROR_CODES, REGISTRY, markdown_table
from api.errors import DomainError

ROOT = Path(__file__).resolve().parents[2]
# Calls whose ``code=`` is not a problem code (a server's fault code is data, not an error).
NOT_PROBLEM_CODES = {"Fault"}


def _domain_errors() -> dict[str, type[DomainError]]:
    """Every DomainError class in api/, by class name (imports every module of api/)."""
    for module in pkgutil.walk_packages(api.__path__, "api."):
        importlib.import_module(module.name)
    found: dict[str, type[DomainError]] = {}
    todo: list[type[DomainError]] = [DomainError]
    while todo:
        cls = todo.pop()
        found[cls.__name__] = cls
        todo.extend(cls.__subclasses__())
    return found


def _raised_codes() -> Iterator[tuple[str, str, int | None, str]]:
    """(code, callee, status it is raised with or None if unknown, where) for every literal
    ``code="..."`` keyword and every ``problem_response(status, "code", ...)`` in api/."""
    classes = _domain_errors()
    for path in sorted((ROOT / "api").rglob("*.py")):
        tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
        for node in ast.walk(tree):
            if not isinstance(node, ast.Call):
                continue
            func = node.func
            callee = func.attr if isinstance(func, ast.Attribute) else getattr(func, "id", "")
            where = f"{path.relative_to(ROOT)}:{node.lineno}"
            if callee == "problem_response" and len(node.args) >= 2 \
                    and isinstance(node.args[1], ast.Constant):
                status = node.args[0].value if isinstance(node.args[0], ast.Constant) else None
                yield str(node.args[1].value), callee, status, where
            for kw in node.keywords:
                if kw.arg == "code" and isinstance(kw.value, ast.Constant) \
                        and callee not in NOT_PROBLEM_CODES:
                    cls = classes.get(callee)
                    yield str(kw.value.value), callee, cls.status if cls else None, where


def test_the_registry_declares_each_code_once_as_snake_case_with_an_error_status() -> None:
    codes = [e.code for e in REGISTRY]
    assert len(codes) == len(set(codes)), sorted(c for c in codes if codes.count(c) > 1)
    for e in REGISTRY:
        assert re.fullmatch(r"[a-z][a-z0-9]*(_[a-z0-9]+)*", e.code), e.code
        assert e.status is None or 400 <= e.status <= 599, e
        assert e.meaning.strip() and "\n" not in e.meaning and "|" not in e.meaning, e


def test_every_code_raised_in_api_is_registered_with_the_status_it_is_raised_with() -> None:
    unknown, wrong_status = [], []
    for code, callee, status, where in _raised_codes():
        if code not in ERROR_CODES:
            unknown.append(f"{where} {callee}(code={code!r})")
        elif status is not None and ERROR_CODES[code].status != status:
            wrong_status.append(f"{where} {callee}(code={code!r}) answers {status}, "
                                f"registered {ERROR_CODES[code].status}")
    assert not unknown, "register these codes in api/error_codes.py: " + "; ".join(unknown)
    assert not wrong_status, "; ".join(wrong_status)


def test_every_error_class_default_code_is_registered_with_its_status() -> None:
    for name, cls in _domain_errors().items():
        assert cls.code in ERROR_CODES, f"{name}.code {cls.code!r} is not registered"
        assert ERROR_CODES[cls.code].status == cls.status, name


def test_the_scan_sees_the_codes_it_must_see() -> None:
    # Guards the scan itself: keyword codes with their class's status, and the handlers'
    # positional ones.
    seen = {(code, status) for code, _, status, _ in _raised_codes()}
    assert {("server_not_found", 404), ("admin_required", 403), ("internal_error", 500),
            ("conflict", 409)} <= seen
    assert {"DomainError", "NotFound", "QuotaExceeded", "NoValidHost"} <= set(_domain_errors())


def _docs_table() -> dict[str, tuple[str, str]]:
    text = (ROOT / "docs" / "api.md").read_text(encoding="utf-8")
    section = text.split("\n## Errors\n", 1)[1].split("\n## ", 1)[0]
    rows = re.findall(r"^\|\s*(\d{3}|any)\s*\|\s*`([a-z0-9_]+)`\s*\|\s*(.*?)\s*\|\s*$",
                      section, flags=re.MULTILINE)
    table: dict[str, tuple[str, str]] = {}
    for status, code, meaning in rows:
        assert code not in table, f"docs/api.md lists {code!r} twice"
        table[code] = (status, meaning)
    return table


def test_docs_error_table_lists_every_registered_code_with_its_status_and_meaning() -> None:
    table = _docs_table()
    expected = {e.code: (str(e.status or "any"), e.meaning) for e in REGISTRY}
    missing = sorted(set(expected) - set(table))
    rows = {line.split("`")[1]: line for line in markdown_table().splitlines()[2:]}
    assert not missing, "add to docs/api.md's error table:\n" + "\n".join(
        rows[c] for c in missing)
    assert not sorted(set(table) - set(expected)), "docs/api.md lists unregistered codes"
    differ = {c: (table[c], expected[c]) for c in expected if table[c] != expected[c]}
    assert not differ, differ


def test_http_layer_answers_carry_registered_codes_and_statuses(client: TestClient,
                                                                admin: dict[str, str]) -> None:
    answers = [
        client.get("/v1/no-such-thing"),
        client.delete("/v1/flavors"),
        client.get("/v1/servers"),
        client.get("/v1/servers", headers={"Authorization": "Bearer nope"}),
        client.post("/v1/flavors", headers={**admin, "Content-Type": "application/json"},
                    content=b"{not json"),
        client.post("/v1/flavors", headers=admin, json={"name": "x", "vcpus": -1}),
        client.get("/v1/servers/no-such-server", headers=admin),
    ]
    seen = [(r.status_code, r.json()["code"]) for r in answers]
    assert seen == [(404, "not_found"), (405, "method_not_allowed"), (401, "missing_token"),
                    (401, "invalid_token"), (400, "malformed_json"), (422, "invalid_input"),
                    (404, "server_not_found")]
    for status, code in seen:
        assert ERROR_CODES[code].status == status
