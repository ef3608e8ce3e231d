"""``minicloud-api`` with a switchable cProfile on every thread and a SQL statement counter.

Used by ``scheduler_bench.py --profile DIR`` (bench only, never in production)::

    python bench/profiled_api.py --host 127.0.0.1 --port P --no-migrate

SIGUSR1 starts a measurement (clears the counters, enables the profilers); SIGUSR2 stops it and
writes ``$MINICLOUD_PROFILE_OUT.pstats`` (the event loop thread and every worker thread the
request ran on, merged; times are each thread's CPU time) and ``$MINICLOUD_PROFILE_OUT.sql``
(statements by text, most frequent first). Sync routes and dependencies run in anyio's worker
threads, so the profiler follows each ``anyio.to_thread.run_sync`` call there instead of
profiling the main thread only.
"""

from __future__ import annotations

import collections
import contextlib
import cProfile
import os
import pstats
import signal
import sys
import threading
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import anyio.to_thread
from sqlalchemy import event
from sqlalchemy.engine import Engine

sys.path.insert(0, str(Path.cwd()))

_active = False
_generation = 0  # bumped by each SIGUSR1: worker threads then start a new profile
_lock = threading.Lock()
_profiles: list[cProfile.Profile] = []
_local = threading.local()
_statements: collections.Counter[str] = collections.Counter()
# CPU time of the profiled thread, not the wall clock: on a shared machine the wall clock
# also counts the time the thread waited for a core.
_main = cProfile.Profile(time.thread_time)


def _thread_profile() -> cProfile.Profile:
    prof: cProfile.Profile | None = getattr(_local, "prof", None)
    if prof is None or getattr(_local, "generation", -1) != _generation:
        prof = _local.prof = cProfile.Profile(time.thread_time)
        _local.generation = _generation
        with _lock:
            _profiles.append(prof)
    return prof


_run_sync = anyio.to_thread.run_sync


async def _profiled_run_sync(func: Callable[..., Any], *args: Any, **kwargs: Any) -> Any:
    def profiled(*inner: Any) -> Any:
        if not _active:
            return func(*inner)
        prof = _thread_profile()
        prof.enable()
        try:
            return func(*inner)
        finally:
            prof.disable()

    return await _run_sync(profiled, *args, **kwargs)


anyio.to_thread.run_sync = _profiled_run_sync  # type: ignore[assignment]


@event.listens_for(Engine, "before_cursor_execute")
def _count(_conn: Any, _cursor: Any, statement: str, *_args: Any) -> None:
    if _active:
        _statements[" ".join(statement.split())[:160]] += 1


def _start(*_: Any) -> None:
    global _active, _generation
    _statements.clear()
    with _lock:
        _profiles.clear()
        _generation += 1
    _main.clear()  # type: ignore[attr-defined]
    _active = True
    _main.enable()


def _stop(*_: Any) -> None:
    global _active
    _active = False
    _main.disable()
    out = os.environ["MINICLOUD_PROFILE_OUT"]
    stats = pstats.Stats(_main)
    with _lock:
        for prof in _profiles:
            with contextlib.suppress(TypeError):  # a profile that never ran
                stats.add(prof)
    stats.dump_stats(out + ".pstats")
    with open(out + ".sql", "w") as fh:
        for text, n in _statements.most_common():
            fh.write(f"{n:8d}  {text}\n")


signal.signal(signal.SIGUSR1, _start)
signal.signal(signal.SIGUSR2, _stop)

from api.server import run  # noqa: E402

run()
