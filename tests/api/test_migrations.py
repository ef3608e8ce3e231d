"""The schema exists only through Alembic, and the migrations match the models."""

from __future__ import annotations

import json
from pathlib import Path

from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import inspect, text

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


def test_rate_card_prices_and_usage_pieces_survive_the_meter_prices_migration(
    tmp_path: Path,
) -> None:
    # 0005_meter_prices moves per-meter price columns into one ``prices`` map and renames the
    # derived pieces by state; stored cards keep their prices both ways.
    with fresh_database(tmp_path) as url:
        upgrade(url, "0004")
        engine = make_engine(url)
        card = {"id": "card-1", "valid_from": "2026-01-01 00:00:00+00:00", "currency": "EUR",
                "vcpu_hour": "0.036", "ram_gib_hour": "0.0072", "disk_gib_hour": "0.00036",
                "flavor_hour": "{}", "created_at": "2026-01-01 00:00:00+00:00"}
        piece = {"project_id": "p", "server_id": "s", "bucket": 0, "start_s": 1, "vcpus": 1,
                 "ram_mb": 512, "disk_gb": 1}
        with engine.begin() as conn:
            conn.execute(text(
                "INSERT INTO rate_cards (id, valid_from, currency, vcpu_hour, ram_gib_hour, "
                "disk_gib_hour, flavor_hour, created_at) VALUES (:id, :valid_from, :currency, "
                ":vcpu_hour, :ram_gib_hour, :disk_gib_hour, :flavor_hour, :created_at)"), card)
            for resource in ("disk", "compute", "stop"):
                conn.execute(text(
                    "INSERT INTO usage_pieces (project_id, server_id, resource, bucket, start_s,"
                    " vcpus, ram_mb, disk_gb) VALUES (:project_id, :server_id, :resource, "
                    ":bucket, :start_s, :vcpus, :ram_mb, :disk_gb)"),
                    {**piece, "resource": resource})

        def pieces() -> list[str]:
            with engine.connect() as conn:
                return sorted(conn.scalars(text("SELECT resource FROM usage_pieces")))

        upgrade(url)
        with engine.connect() as conn:
            prices = conn.scalar(text("SELECT prices FROM rate_cards WHERE id = 'card-1'"))
        if isinstance(prices, str):  # SQLite hands JSON back as text
            prices = json.loads(prices)
        assert prices == {"vcpu_hour": "0.036", "ram_gib_hour": "0.0072",
                          "disk_gib_hour": "0.00036"}
        assert pieces() == ["exists", "running", "stop"]
        downgrade(url, "0004")
        with engine.connect() as conn:
            row = conn.execute(text("SELECT vcpu_hour, ram_gib_hour, disk_gib_hour "
                                    "FROM rate_cards")).one()
        assert tuple(row) == ("0.036", "0.0072", "0.00036")
        assert pieces() == ["compute", "disk", "stop"]
        engine.dispose()
