"""``minicloud-api`` that logs where each usage report's time goes (bench only, never in
production). Used by ``metering_bench.py --under-fleet N --trace-report FILE``::

    MINICLOUD_REPORT_TRACE=FILE python bench/report_trace_api.py --host H --port P

Appends one JSON line per call of each report phase (``build_report``, ``segment_sums``, the
aggregate statement's ``execute``, ``render_json``, ``render_csv``): ``wall``, ``cpu`` (the
thread's CPU time) and ``rq`` (the time the thread was runnable but waited for a CPU, from
/proc/self/task/TID/schedstat), in seconds, and ``all`` (the report covers every project).
What ``wall`` leaves over is time blocked: the GIL, locks, I/O. Two more phases have a
meaningful ``wall`` only: ``endpoint`` (FastAPI running the route function: the wait for a
worker thread, then the report and its rendering) and ``app`` (the whole request inside the
application, from uvicorn handing it over to the last byte of the answer).
"""

from __future__ import annotations

import json
import os
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import fastapi.routing
from sqlalchemy import event
from sqlalchemy.engine import Engine

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import api.main
from api.usage import reports, repository

_out = open(os.environ["MINICLOUD_REPORT_TRACE"], "a", buffering=1)  # noqa: SIM115
_local = threading.local()


def _now() -> tuple[float, float, float]:
    with open(f"/proc/self/task/{threading.get_native_id()}/schedstat") as f:
        waited = int(f.read().split()[1]) / 1e9
    return time.perf_counter(), time.thread_time(), waited


def _log(phase: str, start: tuple[float, float, float]) -> None:
    end = _now()
    _out.write(json.dumps({"phase": phase, "all": getattr(_local, "all", None),
                           "wall": end[0] - start[0], "cpu": end[1] - start[1],
                           "rq": end[2] - start[2]}) + "\n")


def _traced(module: Any, name: str) -> None:
    fn: Callable[..., Any] = getattr(module, name)

    def traced(*args: Any, **kwargs: Any) -> Any:
        if name == "build_report":
            _local.all = kwargs.get("project_id") is None
        start = _now()
        try:
            return fn(*args, **kwargs)
        finally:
            _log(name, start)

    setattr(module, name, traced)


for _name in ("build_report", "render_json", "render_csv"):
    _traced(reports, _name)
_traced(repository, "segment_sums")


def _is_aggregate(statement: str) -> bool:
    return "usage_pieces" in statement and "GROUP BY" in statement


@event.listens_for(Engine, "before_cursor_execute")
def _before(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
    if _is_aggregate(statement):
        _local.execute = _now()


@event.listens_for(Engine, "after_cursor_execute")
def _after(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
    if _is_aggregate(statement):
        _log("execute", _local.execute)


_run_endpoint = fastapi.routing.run_endpoint_function


async def _endpoint(*, dependant: Any, values: dict[str, Any], is_coroutine: bool) -> Any:
    if getattr(dependant.call, "__name__", "") != "usage_report":
        return await _run_endpoint(dependant=dependant, values=values, is_coroutine=is_coroutine)
    start = _now()
    try:
        return await _run_endpoint(dependant=dependant, values=values, is_coroutine=is_coroutine)
    finally:
        _local.all = values.get("project_id") is None
        _log("endpoint", start)


fastapi.routing.run_endpoint_function = _endpoint
_create_app = api.main.create_app


def _traced_app(*args: Any, **kwargs: Any) -> Any:
    app = _create_app(*args, **kwargs)

    async def traced(scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or scope.get("path") != "/v1/usage":
            await app(scope, receive, send)
            return
        start = _now()
        try:
            await app(scope, receive, send)
        finally:
            _local.all = b"project_id=" not in scope.get("query_string", b"")
            _log("app", start)

    return traced


api.main.create_app = _traced_app

if __name__ == "__main__":
    from api.server import run

    run()
