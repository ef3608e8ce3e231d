"""Bad input across the WHOLE API (issue 2, acceptance 5).

Operations and their body models are enumerated by introspection (tests/api/route_table.py):
every JSON body gets malformed JSON, the wrong JSON type, wrong field types, unknown fields,
10 KB strings, control characters and absurd numbers; every path parameter gets a NUL byte,
300 characters and dot segments. Each answer is a 4xx problem document with a stable code and
a request id, never a 500, and nothing is written.
"""

from __future__ import annotations

import base64
import types
import typing
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
from fastapi.testclient import TestClient
from pydantic import BaseModel
from sqlalchemy import func, select

from api.db import Base
from tests.agent_factories import db, observe
from tests.api.route_table import Operation, operations
from tests.factories import IMAGE_BYTES, Account, make_account, make_image, unique


@dataclass
class Ids:
    """Real objects to name in paths, and who may reach each operation's handler."""

    member: Account
    admin: dict[str, str]
    host: dict[str, str]
    values: dict[str, str]

    def headers(self, op: Operation) -> dict[str, str]:
        """Credentials that pass ``op``'s guard (admin for user operations: sees everything)."""
        return self.host if op.guard == "host" else self.admin


@pytest.fixture(scope="module")
def ops(client: TestClient) -> list[Operation]:
    """Every operation of the app under test."""
    return operations(client.app)  # type: ignore[arg-type]


@pytest.fixture(scope="module")
def ids(client: TestClient, admin: dict[str, str], _pool_host: dict[str, str]) -> Ids:
    """A member's project with a running server, an image and a group."""
    r = client.post("/v1/agent/heartbeat", headers=_pool_host, json={"observed": []})
    assert r.status_code == 200, r.text
    member = make_account(client, admin, "member")
    image = make_image(client, member.headers)
    r = client.post("/v1/server-groups", headers=member.headers,
                    json={"name": unique("grp"), "policy": "affinity"})
    assert r.status_code == 201, r.text
    group_id = r.json()["id"]
    r = client.post("/v1/servers", headers=member.headers,
                    json={"name": unique("vm"), "flavor": "tiny", "image": image["id"]})
    assert r.status_code == 202, r.text
    server_id = r.json()["id"]
    observe(client, _pool_host, server_id, "running")
    hosts = client.get("/v1/hosts", headers=admin).json()
    host_id = next(h["id"] for h in hosts if h["name"] == "pool-host")
    flavor_id = client.get("/v1/flavors/tiny", headers=admin).json()["id"]
    values = {"server_id": server_id, "image_id": image["id"], "ref": image["id"],
              "group_id": group_id, "project_id": member.project_id, "user_id": member.user_id,
              "flavor_id": flavor_id, "host_id": host_id, "cred_id": unique("cred"),
              "period": "2026-01", "card_id": unique("card"),
              "migration_file": "disk", "scaling_group_id": unique("sg")}
    return Ids(member, admin, _pool_host, values)


# Tables only background loops write (the scaling leader's lease, agents' guest metrics):
# they may move while a refused request runs, which proves nothing about the request.
BACKGROUND_TABLES = {"leases", "guest_metric_counters", "guest_metric_rollups"}


def _row_counts(client: TestClient) -> dict[str, int]:
    """Rows in every table a request can write (the proof that a refused request wrote
    nothing)."""
    with db(client) as s:
        return {t.name: s.scalar(select(func.count()).select_from(t)) or 0
                for t in Base.metadata.sorted_tables if t.name not in BACKGROUND_TABLES}


def _keep_pool_host_up(client: TestClient, ids: Ids) -> None:
    """Heartbeat the pool host (only its ``last_heartbeat_at`` moves: no row is added).

    A loop of refused requests can outlast ``host_down_after_seconds`` on a loaded machine;
    the host monitor would then record ``host_down`` for the module's running server, a write
    that no refused request made.
    """
    r = client.post("/v1/agent/heartbeat", headers=ids.host, json={"observed": []})
    assert r.status_code == 200, r.text


def _assert_problem(r: Any, context: str, statuses: tuple[int, ...] = ()) -> None:
    assert 400 <= r.status_code < 500, f"{context}: {r.status_code} {r.text[:300]}"
    if statuses:
        assert r.status_code in statuses, f"{context}: {r.status_code} {r.text[:300]}"
    assert r.headers["content-type"].startswith("application/problem+json"), context
    doc = r.json()
    assert doc["code"] and doc["code"].replace("_", "").isalpha(), (context, doc)
    assert doc["request_id"] and doc["status"] == r.status_code, (context, doc)


# -- path parameters -------------------------------------------------------------------------

BAD_PATH_VALUES = {
    "nul": "a%00b",
    "long": "x" * 300,
    "dots": "..",
    "dot_segments": "..%2F..%2Fetc%2Fpasswd",
    "percent": "%25",
    "unicode": "%C3%A9%E2%80%AE",
    "space": "a%20b",
}

# Valid bodies, so the bad path value (and not the body) is what the handler sees.
VALID_BODY: dict[tuple[str, str], Any] = {
    ("PUT", "/v1/projects/{project_id}/members/{user_id}"): {"role": "reader"},
    ("POST", "/v1/servers/{server_id}/actions"): {"action": "stop"},
    ("PATCH", "/v1/scaling-groups/{scaling_group_id}/members/{server_id}"): {"protected": True},
    ("POST", "/v1/agent/servers/{server_id}/observations"): {
        "state": "running", "seen_at": "2026-01-01T00:00:00Z", "idempotency_key": "k-1"},
    ("PATCH", "/v1/hosts/{host_id}"): {},
    ("PUT", "/v1/quotas/{project_id}"): {},
}
RAW_BODY = {("PUT", "/v1/images/{image_id}/file"), ("PUT", "/v1/agent/servers/{server_id}/console")}


def _send(client: TestClient, op: Operation, url: str, headers: dict[str, str]) -> Any:
    key = (op.method, op.path)
    if key in RAW_BODY:
        return client.request(op.method, url, headers=headers, content=IMAGE_BYTES["raw"])
    if key in VALID_BODY:
        return client.request(op.method, url, headers=headers, json=VALID_BODY[key])
    return client.request(op.method, url, headers=headers)


def test_every_path_parameter_refuses_nul_long_and_dotted_values(
        client: TestClient, ops: list[Operation], ids: Ids) -> None:
    with_params = [op for op in ops if op.params]
    assert len(with_params) > 30
    _keep_pool_host_up(client, ids)
    before = _row_counts(client)
    failures = []
    for op in with_params:
        _keep_pool_host_up(client, ids)
        for param in op.params:
            for label, bad in BAD_PATH_VALUES.items():
                url = op.url(ids.values | {param: bad})
                r = _send(client, op, url, ids.headers(op))
                try:
                    _assert_problem(r, f"{op} {param}={label}")
                except AssertionError as exc:
                    failures.append(str(exc))
    assert not failures, "\n".join(failures)
    after = _row_counts(client)
    # Refused requests write nothing; only the audit-free counters of reads may not move.
    assert after == before


# -- JSON bodies -----------------------------------------------------------------------------


def _body_ops(ops: list[Operation]) -> list[Operation]:
    return [op for op in ops if op.body_model is not None]


SSH_KEY = "ssh-ed25519 " + base64.b64encode(
    b"\x00\x00\x00\x0bssh-ed25519\x00\x00\x00\x20" + b"k" * 32).decode() + " me@host"

# One complete, valid body per JSON operation, every optional field filled, so that each
# mutation below breaks exactly one thing. {x} names an object from ``Ids.values``.
VALID_BODIES: dict[tuple[str, str], dict[str, Any] | list[dict[str, Any]]] = {
    ("POST", "/v1/auth/tokens"): {"user": "nobody", "password": "pw-secret",
                                  "project": "{project_id}"},
    ("POST", "/v1/auth/password"): {"old_password": "pw-secret", "new_password": "pw-secret-2"},
    ("PATCH", "/v1/users/{user_id}"): {"enabled": True},
    ("POST", "/v1/projects"): {"name": "proj-x", "description": "A project"},
    ("PUT", "/v1/projects/{project_id}/members/{user_id}"): {"role": "reader"},
    ("POST", "/v1/users"): {"name": "user-x", "password": "pw-secret-1",
                            "project_id": "{project_id}", "role": "member"},
    ("POST", "/v1/application-credentials"): {"name": "cred-x",
                                               "expires_at": "2099-01-01T00:00:00Z"},
    ("POST", "/v1/flavors"): {"name": "flavor-x", "vcpus": 1, "ram_mb": 512, "disk_gb": 1,
                              "is_public": True, "extra_specs": {"hw:cpu": "shared"}},
    ("POST", "/v1/images"): {"name": "image x", "disk_format": "raw", "visibility": "private",
                             "min_disk": 1, "min_ram": 64,
                             "properties": {"kernel_id": "{image_id}", "ramdisk_id": "{image_id}",
                                            "kernel_cmdline": "console=ttyS0",
                                            "architecture": "x86_64"}},
    ("POST", "/v1/servers"): [
        {"name": "vm x", "flavor": "tiny", "image": "{image_id}",
         "user_data": "#cloud-config\n", "key_data": SSH_KEY,
         "server_group": "{group_id}", "availability_zone": "nova"},
        # key_name instead of key_data (both at once are refused: key_name_with_key_data).
        {"name": "vm x", "flavor": "tiny", "image": "{image_id}", "key_name": "key x"}],
    ("POST", "/v1/keypairs"): {"name": "key x", "public_key": SSH_KEY},
    ("POST", "/v1/servers/{server_id}/actions"): {"action": "reboot", "type": "soft"},
    ("POST", "/v1/server-groups"): {"name": "group x", "policy": "affinity"},
    ("PUT", "/v1/quotas/{project_id}"): {"instances": 1, "vcpus": 1, "ram_mb": 1, "disk_gb": 1,
                                         "images": 1, "image_bytes": 1},
    ("PATCH", "/v1/hosts/{host_id}"): {
        "enabled": True, "disabled_reason": "why", "availability_zone": "nova",
        "aggregates": {"ssd": "true"}, "allocation_ratios": {"VCPU": 4.0},
        "reserved": {"MEMORY_MB": 0}},
    ("POST", "/v1/agent/enroll"): {"token": "no-such-token", "name": "node-x",
                                   "availability_zone": "nova", "libvirt_uri": "test:///default",
                                   "virt_type": "qemu", "architecture": "x86_64"},
    ("PUT", "/v1/agent/inventory"): {
        **{rc: {"total": 1_000_000, "reserved": 0, "min_unit": 1, "max_unit": 1024}
           for rc in ("VCPU", "MEMORY_MB", "DISK_GB")},
        "migration": {"libvirt_uri": "qemu+tls://10.0.0.9:16514/system",
                      "migrate_uri": "tcp://10.0.0.9", "port_min": 49152, "port_max": 49215,
                      "instances_dir": "/var/lib/minicloud/instances",
                      "image_cache_dir": "/var/lib/minicloud/images"}},
    ("POST", "/v1/agent/servers/{server_id}/migration-progress"): {
        "data_total": 100, "data_processed": 40, "data_remaining": 60},
    ("POST", "/v1/agent/fencing"): {"fenced": [
        {"server_id": "{server_id}", "domain": "destroyed", "files_removed": True}]},
    ("POST", "/v1/agent/heartbeat"): {"observed": [
        {"server_id": "{server_id}", "state": "running", "seen_at": "2026-01-01T00:00:00Z"}],
        "foreign": [{"server_id": "0b5e3c1e-8d3e-4f5a-9b1c-2d3e4f5a6b7c",
                     "host_id": "1c6f4d2f-9e4f-4a6b-8c2d-3e4f5a6b7c8d"}],
        "progress": {"passes": 3, "pass_started_at": "2026-01-01T00:00:00Z",
                     "last_pass_at": "2026-01-01T00:00:00Z", "failing_count": 1,
                     "failing": [{"server_id": "{server_id}", "message": "download: 502"}]},
        "full": True},
    ("POST", "/v1/agent/credential"): {"credential": "mch_" + "A" * 43},
    ("POST", "/v1/agent/servers/{server_id}/observations"): [  # unexpected_stop: shut off
        {"state": "running", "seen_at": "2026-01-01T00:00:00Z", "idempotency_key": "k-1",
         "operation": {"operation_id": "reboot-1", "result": "success"}, "message": "ok",
         "addresses": [{"ip": "10.0.0.2", "mac": "52:54:00:00:00:01", "network": "default"}]},
        {"state": "shutoff", "seen_at": "2026-01-01T00:00:00Z", "idempotency_key": "k-2",
         "unexpected_stop": "destroyed"}],
    ("POST", "/v1/agent/guest-metrics"): {"at": "2026-01-01T00:00:00Z", "samples": [
        {"server_id": "{server_id}", "cpu_time_ns": 1, "vcpus": 1, "memory_kib": 1024,
         "memory_unused_kib": 512, "memory_rss_kib": 800, "disk_read_bytes": 1,
         "disk_write_bytes": 1, "net_rx_bytes": 1, "net_tx_bytes": 1}]},
    ("POST", "/v1/scheduler/simulate"): [  # a flavor or sizes, not both
        {"flavor": "tiny", "image": "{image_id}", "availability_zone": "nova",
         "server_group": "{group_id}", "project_id": "{project_id}", "request_id": "r-1"},
        {"vcpus": 1, "ram_mb": 1, "disk_gb": 1}],
    ("POST", "/v1/usage/adjustments"): {"project_id": "{project_id}", "server_id": "{server_id}",
                                        "amount": "1.5", "reason": "refund",
                                        "idempotency_key": "adj-1"},
    ("POST", "/v1/scaling-groups"): [
        {"name": "web-x", "launch": {"flavor": "tiny", "image": "{image_id}",
                                     "user_data": "#cloud-config\n", "key_data": SSH_KEY,
                                     "availability_zone": "nova", "anti_affinity": True},
         "min_size": 0, "max_size": 2, "desired": 1, "scale_in_policy": "oldest_first",
         "policy": {"metric": "cpu_util", "target": 50.0, "tolerance": 0.1,
                    "scale_out_cooldown_s": 60, "scale_in_stabilization_s": 300,
                    "warmup_s": 120, "window_s": 60},
         "scheduled_actions": [{"name": "night", "cron": "0 22 * * *", "min_size": 0,
                                "max_size": 2, "desired": 0}]},
        {"name": "web-y", "launch": {"flavor": "tiny", "image": "{image_id}",
                                     "key_name": "key x"}, "max_size": 1}],
    ("PATCH", "/v1/scaling-groups/{scaling_group_id}"): {
        "min_size": 0, "max_size": 2, "desired": 1, "scale_in_policy": "newest_first",
        "policy": {"target": 50.0}, "scheduled_actions": [
            {"name": "morning", "cron": "0 8 * * 1-5", "desired": 2}]},
    ("PATCH", "/v1/scaling-groups/{scaling_group_id}/members/{server_id}"): {"protected": True},
    ("POST", "/v1/rates"): {"valid_from": "2099-01-01T00:00:00Z", "currency": "EUR",
                            "vcpu_hour": "0.01", "ram_gib_hour": "0.01", "disk_gib_hour": "0.01",
                            "flavor_hour": {"tiny": "0.02"}},
}
# String fields where 10 KB is within their documented limit get a string past that limit.
LONG_LIMITS = {"user_data": 87_385}
# String fields that are not names: newlines and escapes are legitimate content there.
FREE_TEXT = {"user_data", "password", "old_password", "new_password", "message", "reason",
             "kernel_cmdline", "token"}
# A password is only ever hashed, never stored, shown or compared as text: any character goes.
NUL_OK = {"password", "old_password", "new_password"}
# Decimal fields whose sign is meaningful (an adjustment credits or debits).
SIGNED = {"amount"}


def _fill(value: Any, ids: Ids) -> Any:
    if isinstance(value, str):
        return value.format(**ids.values)
    if isinstance(value, dict):
        return {k: _fill(v, ids) for k, v in value.items()}
    if isinstance(value, list):
        return [_fill(v, ids) for v in value]
    return value


def _leaves(body: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    if isinstance(body, dict):
        for k, v in body.items():
            yield from _leaves(v, (*path, k))
    elif isinstance(body, list):
        for i, v in enumerate(body):
            yield from _leaves(v, (*path, i))
    else:
        yield path, body


def _replace(body: Any, path: tuple[Any, ...], value: Any) -> Any:
    if not path:
        return value
    head, rest = path[0], path[1:]
    if isinstance(body, dict):
        return {k: (_replace(v, rest, value) if k == head else v) for k, v in body.items()}
    return [(_replace(v, rest, value) if i == head else v) for i, v in enumerate(body)]


def _mutations(body: dict[str, Any]) -> Iterator[tuple[str, Any]]:
    """(label, broken body) pairs: one broken leaf at a time."""
    yield "unknown field", body | {"zz_unknown": 1}
    for path, value in _leaves(body):
        where = ".".join(map(str, path))
        name = str(path[-1])
        if isinstance(value, bool):
            yield f"{where} not a bool", _replace(body, path, "maybe")
        elif isinstance(value, int | float):
            yield f"{where} a string", _replace(body, path, "abc")
            yield f"{where} negative", _replace(body, path, -1)
            yield f"{where} 10**30", _replace(body, path, 10**30)
            if type(value) is int:
                yield f"{where} a fraction", _replace(body, path, 1.5)
        elif isinstance(value, str):
            # Not a number: strings here may be decimals, datetimes or addresses, which
            # accept numbers on purpose.
            yield f"{where} an object", _replace(body, path, {"a": 1})
            yield f"{where} a list", _replace(body, path, [value])
            long = "x" * max(10_240, LONG_LIMITS.get(name, 0) + 1)
            yield f"{where} 10 KB", _replace(body, path, long)
            if name not in NUL_OK:
                yield f"{where} NUL", _replace(body, path, value[:1] + "\x00" + value[2:])
            if name not in FREE_TEXT:
                yield f"{where} ESC", _replace(body, path, value[:1] + "\x1b[2J" + value[1:])
                yield f"{where} newline", _replace(body, path, value[:1] + "\n" + value[1:])
            if value.replace(".", "", 1).isdigit() and name not in SIGNED:
                yield f"{where} negative", _replace(body, path, "-" + value)
            if value.replace(".", "", 1).isdigit():
                yield f"{where} 10**30", _replace(body, path, str(10**30))
    # dict fields keyed by free names: a 10 KB key and a NUL key.
    for path, value in _dict_fields(body):
        key = next(iter(value))
        for label, bad in (("10 KB key", "k" * 10_240), ("NUL key", "k\x00")):
            yield f"{'.'.join(map(str, path))} {label}", _replace(
                body, path, {bad if k == key else k: v for k, v in value.items()})


def _dict_fields(body: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[tuple[Any, ...], Any]]:
    if isinstance(body, dict):
        for k, v in body.items():
            if isinstance(v, dict) and str(k) in FREE_KEYED:
                yield (*path, k), v
            yield from _dict_fields(v, (*path, k))
    elif isinstance(body, list):
        for i, v in enumerate(body):
            yield from _dict_fields(v, (*path, i))


FREE_KEYED = {"extra_specs", "aggregates", "flavor_hour", "allocation_ratios", "reserved"}


def _models(annotation: Any) -> Iterator[type[BaseModel]]:
    """Every pydantic model reachable from ``annotation`` (unions, lists, dicts, nesting)."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        yield annotation
        for field in annotation.model_fields.values():
            yield from _models(field.annotation)
        return
    origin = typing.get_origin(annotation)
    if origin is typing.Annotated:
        yield from _models(typing.get_args(annotation)[0])
    elif origin is not None or isinstance(annotation, types.UnionType):
        for arg in typing.get_args(annotation):
            yield from _models(arg)


def test_every_body_model_rejects_unknown_fields(ops: list[Operation]) -> None:
    loose = sorted({m.__name__ for op in ops for m in _models(op.body_annotation)
                    if m.model_config.get("extra") != "forbid"})
    assert not loose, f"request models that accept unknown fields: {loose}"


def test_every_json_operation_has_a_complete_valid_body(ops: list[Operation], ids: Ids) -> None:
    from pydantic import TypeAdapter

    json_ops = {(op.method, op.path): op for op in ops if op.body_annotation is not None}
    assert set(json_ops) == set(VALID_BODIES), "add the new operation to VALID_BODIES"
    for key, op in json_ops.items():
        bodies = _bodies(key, ids)
        for body in bodies:
            TypeAdapter(op.body_annotation).validate_python(body)
        model = op.body_model
        if model is not None:  # every field filled, so every field gets mutated
            assert {k for b in bodies for k in b} == set(model.model_fields), key


def _bodies(key: tuple[str, str], ids: Ids) -> list[dict[str, Any]]:
    given = VALID_BODIES[key]
    return [_fill(b, ids) for b in (given if isinstance(given, list) else [given])]


def _json_ops(ops: list[Operation]) -> list[Operation]:
    return [op for op in ops if (op.method, op.path) in VALID_BODIES]


def test_malformed_or_non_object_json_is_refused_everywhere(
        client: TestClient, ops: list[Operation], ids: Ids) -> None:
    _keep_pool_host_up(client, ids)
    before = _row_counts(client)
    for op in _json_ops(ops):
        _keep_pool_host_up(client, ids)
        url, headers = op.url(ids.values), ids.headers(op) | {"content-type": "application/json"}
        r = client.request(op.method, url, headers=headers, content=b'{"name": "x",')
        _assert_problem(r, f"{op} malformed", (400,))
        assert r.json()["code"] == "malformed_json"
        for label, raw in (("array", b"[]"), ("number", b"42"), ("string", b'"x"'),
                           ("null", b"null"), ("empty", b"")):
            r = client.request(op.method, url, headers=headers, content=raw)
            _assert_problem(r, f"{op} {label}", (422,))
            assert r.json()["code"] == "invalid_input", (op, label, r.text)
    assert _row_counts(client) == before


def test_every_broken_field_of_every_body_is_refused_and_writes_nothing(
        client: TestClient, ops: list[Operation], ids: Ids) -> None:
    _keep_pool_host_up(client, ids)
    before = _row_counts(client)
    failures = []
    count = 0
    for op in _json_ops(ops):
        _keep_pool_host_up(client, ids)
        mutations = [m for body in _bodies((op.method, op.path), ids) for m in _mutations(body)]
        for label, broken in mutations:
            count += 1
            if "idempotency_key" in broken and not label.startswith("idempotency_key"):
                # A fresh key, or the first accepted request would answer all the others.
                broken["idempotency_key"] = unique("key")
            r = client.request(op.method, op.url(ids.values), headers=ids.headers(op),
                               json=broken)
            try:
                _assert_problem(r, f"{op} {label}")
            except AssertionError as exc:
                failures.append(str(exc).splitlines()[0])
    assert count > 400
    assert not failures, "\n".join(failures)
    assert _row_counts(client) == before


# Valid values for query parameters, so that one bad parameter is the only fault.
QUERY_VALID = {"start": "2026-01-01T00:00:00Z", "end": "2026-02-01T00:00:00Z"}


def test_every_query_parameter_refuses_nul_and_long_values(
        client: TestClient, ops: list[Operation], ids: Ids) -> None:
    with_query = [op for op in ops if op.route.dependant.query_params]
    assert len(with_query) >= 4
    _keep_pool_host_up(client, ids)
    before = _row_counts(client)
    failures = []
    for op in with_query:
        _keep_pool_host_up(client, ids)
        names = [p.alias for p in op.route.dependant.query_params]
        base = {n: QUERY_VALID[n] for n in names if n in QUERY_VALID}
        for name in names:
            for label, bad in (("nul", "a\x00b"), ("long", "x" * 300), ("negative", "-1"),
                               ("huge", str(10**30))):
                r = client.get(op.url(ids.values), headers=ids.headers(op),
                               params=base | {name: bad})
                if r.status_code >= 500 or (r.status_code >= 400 and not r.headers[
                        "content-type"].startswith("application/problem+json")):
                    failures.append(f"{op} {name}={label}: {r.status_code} {r.text[:200]}")
    assert not failures, "\n".join(failures)
    assert _row_counts(client) == before


# -- the explicit cases --------------------------------------------------------------


def test_unknown_flavor_or_image_at_server_create_is_404_and_writes_nothing(
        client: TestClient, ids: Ids) -> None:
    headers = ids.member.headers
    before = _row_counts(client)
    for fields, code in (({"flavor": "no-such-flavor"}, "flavor_not_found"),
                         ({"flavor": "00000000-0000-0000-0000-000000000000"}, "flavor_not_found"),
                         ({"image": "no-such-image"}, "image_not_found"),
                         ({"image": "00000000-0000-0000-0000-000000000000"}, "image_not_found")):
        body = {"name": unique("vm"), "flavor": "tiny", "image": ids.values["image_id"]} | fields
        r = client.post("/v1/servers", headers=headers, json=body)
        _assert_problem(r, str(fields), (404, 422))
        assert r.json()["code"] == code, r.text
    assert _row_counts(client) == before


@pytest.mark.parametrize(("disk_format", "data"), [
    ("qcow2", IMAGE_BYTES["raw"]),
    ("qcow2", b""),
    ("aki", IMAGE_BYTES["qcow2"]),
    ("ari", b"\x00" * 4096),
])
def test_image_bytes_that_do_not_match_the_format_are_refused_and_nothing_is_kept(
        client: TestClient, ids: Ids, disk_format: str, data: bytes) -> None:
    headers = ids.member.headers
    r = client.post("/v1/images", headers=headers,
                    json={"name": unique("img"), "disk_format": disk_format})
    assert r.status_code == 201, r.text
    image_id = r.json()["id"]
    before = _row_counts(client)
    r = client.put(f"/v1/images/{image_id}/file", headers=headers, content=data)
    _assert_problem(r, disk_format, (400, 422))
    assert _row_counts(client) == before
    image = client.get(f"/v1/images/{image_id}", headers=headers).json()
    assert (image["status"], image["size"], image["sha256"]) == ("queued", None, None)
    r = client.get(f"/v1/images/{image_id}/file", headers=headers)
    assert r.status_code == 409, r.text
