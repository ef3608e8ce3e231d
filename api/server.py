"""``minicloud-api``: run the API on uvicorn after bringing the schema to head."""

from __future__ import annotations

import argparse
import gc
import logging
import os
import resource
from pathlib import Path

import uvicorn
from fastapi import FastAPI

from api import metrics
from api.config import get_settings
from api.main import create_app


def _share_metrics(default: Path) -> None:
    """Let the worker processes add up their metrics (api.metrics): PROMETHEUS_MULTIPROC_DIR,
    given or ``default``, emptied before any worker starts (files of old processes would count
    twice)."""
    directory = Path(os.environ.setdefault("PROMETHEUS_MULTIPROC_DIR", str(default)))
    directory.mkdir(parents=True, exist_ok=True)
    for stale in directory.glob("*.db"):
        stale.unlink()


def _raise_open_files_limit() -> None:
    """Raise the soft open-file limit to the hard one: every agent keeps a connection (two
    while its long-poll waits), and the usual soft limit of 1,024 would refuse the
    connections of a few hundred hosts (accept() failing with EMFILE)."""
    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if hard == resource.RLIM_INFINITY or soft < hard:
        resource.setrlimit(resource.RLIMIT_NOFILE, (hard, hard))


KEEP_ALIVE_SECONDS = 30
"""How long an idle client connection stays open."""

COLLECTOR_THRESHOLDS = (30_000, 10, 2_000)
"""The cyclic garbage collector's generation thresholds in the API process (Python's are
700, 10, 10). Every waiting long-poll holds objects for up to its wait, so they outlive the
young generations; with Python's defaults a fleet's polls set off a full collection every
few seconds, and a full collection stops the process for as long as it takes to walk every
object: 250 ms with 3,000 hosts, more with more. Most garbage here is freed by reference
counting; the collector only looks for cycles, so full collections can be rare (about one
per 600 million allocations), and the middle generation is kept small (at most 300,000
objects per walk). ``minicloud_gc_pause_seconds`` shows the pauses."""


def server_app() -> FastAPI:
    """The application as ``minicloud-api`` serves it (uvicorn's factory, run in every
    worker): the collector tuned (``COLLECTOR_THRESHOLDS``) and the objects made at start-up
    (modules, routes, models) frozen out of its walks."""
    gc.set_threshold(*COLLECTOR_THRESHOLDS)
    metrics.watch_collector()
    app = create_app()
    gc.collect()
    gc.freeze()
    return app


def run() -> None:
    """Entry point of ``minicloud-api --host H --port P`` (HTTPS when ``tls_certfile`` is set)."""
    settings = get_settings()
    parser = argparse.ArgumentParser(prog="minicloud-api", description=__doc__)
    parser.add_argument("--host", default=settings.host)
    parser.add_argument("--port", type=int, default=settings.port)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--no-migrate", action="store_true",
                        help="do not run 'db upgrade' at start")
    args = parser.parse_args()
    log_level = os.environ.get("MINICLOUD_LOG_LEVEL", "INFO").upper()
    logging.basicConfig(level=log_level,
                        format="%(asctime)s %(levelname)s %(name)s %(message)s")
    if (settings.tls_certfile is None) != (settings.tls_keyfile is None):
        parser.error("MINICLOUD_TLS_CERTFILE and MINICLOUD_TLS_KEYFILE go together")
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    _raise_open_files_limit()
    if args.workers > 1:
        _share_metrics(settings.data_dir / "prometheus")
    if not args.no_migrate:
        from api.migrate import upgrade

        upgrade(settings.effective_database_url)
    # With a certificate, uvicorn serves HTTPS only (no plain-HTTP listener). Idle
    # connections are kept longer than an httpx client keeps them (5 s): the client always
    # closes first, so it never sends a request on a connection the server is closing (a
    # transport error for every agent whose heartbeat interval passes uvicorn's 5 s default).
    # uvicorn's own loggers (its access log: one line per heartbeat) follow the same level.
    uvicorn.run("api.server:server_app", factory=True, host=args.host, port=args.port,
                workers=args.workers, log_level=log_level.lower(),
                timeout_keep_alive=KEEP_ALIVE_SECONDS,
                ssl_certfile=str(settings.tls_certfile) if settings.tls_certfile else None,
                ssl_keyfile=str(settings.tls_keyfile) if settings.tls_keyfile else None)
