"""Test databases: a fresh, migrated database per test session on SQLite or PostgreSQL.

``MINICLOUD_TEST_DATABASE_URL`` selects the backend: unset or ``sqlite`` gives an SQLite file in
a temporary folder; a ``postgresql+psycopg://user:pw@host/db`` URL names a server on which a new
database is created for the session and dropped afterwards.
"""

from __future__ import annotations

import os
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

from sqlalchemy import create_engine, text
from sqlalchemy.engine import make_url


def backend() -> str:
    """``sqlite`` or ``postgresql``, from the environment."""
    url = os.environ.get("MINICLOUD_TEST_DATABASE_URL", "sqlite")
    return "postgresql" if url.startswith("postgresql") else "sqlite"


@contextmanager
def fresh_database(tmp: Path) -> Iterator[str]:
    """Yield the URL of a new, empty database; drop it afterwards."""
    url = os.environ.get("MINICLOUD_TEST_DATABASE_URL", "sqlite")
    if not url.startswith("postgresql"):
        yield f"sqlite:///{tmp / f'mc-{uuid.uuid4().hex[:8]}.db'}"
        return
    server = make_url(url)
    name = f"mc_test_{uuid.uuid4().hex[:12]}"
    admin = create_engine(server.set(database="postgres"), isolation_level="AUTOCOMMIT")
    with admin.connect() as conn:
        conn.execute(text(f'CREATE DATABASE "{name}"'))
    try:
        yield server.set(database=name).render_as_string(hide_password=False)
    finally:
        with admin.connect() as conn:
            conn.execute(text(f'DROP DATABASE IF EXISTS "{name}" WITH (FORCE)'))
        admin.dispose()
