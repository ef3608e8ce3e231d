"""The schema exists only through Alembic, and the migrations match the models."""

from __future__ import annotations

from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect

import api.models  # noqa: F401
from api.db import Base, make_engine
from api.migrate import downgrade, upgrade
from tests.db import fresh_database


def test_upgrade_to_head_matches_models_and_downgrade_to_base_empties(tmp_path: Path) -> None:
    with fresh_database(tmp_path) as url:
        upgrade(url)
        engine = make_engine(url)
        with engine.connect() as conn:
            ctx = MigrationContext.configure(conn, opts={"compare_type": True})
            diff = compare_metadata(ctx, Base.metadata)
        assert diff == [], f"models and migrations disagree: {diff}"
        downgrade(url, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        upgrade(url)  # and back up again from base
        assert set(Base.metadata.tables) <= set(inspect(engine).get_table_names())
        engine.dispose()
