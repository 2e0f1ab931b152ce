from __future__ import annotations

import sqlalchemy as sa
from alembic.autogenerate import compare_metadata
from alembic.runtime.migration import MigrationContext
from sqlalchemy.engine import URL, Engine

from app.storage.engine import create_engine_for
from app.storage.migrate import (
    current_revision,
    downgrade_database,
    head_revision,
    upgrade_database,
)
from app.storage.schema import metadata

TABLES = {
    "alembic_version",
    "api_keys",
    "audit_anchors",
    "audit_detail_keys",
    "audit_heads",
    "audit_log",
    "enrollments",
    "erasure_log",
    "frames",
    "idempotency_keys",
    "keyring_state",
    "liveness_challenges",
    "org_counters",
    "org_closures",
    "orgs",
    "request_log",
    "sealed_objects",
    "source_documents",
    "subject_keys",
    "subjects",
    "watchlist_entries",
    "watchlist_members",
    "watchlists",
    "webhook_attempts",
    "webhook_deliveries",
    "webhook_endpoints",
    "webhook_events",
}


def _tables(engine: Engine) -> set[str]:
    return set(sa.inspect(engine).get_table_names())


def test_upgrade_fresh_database_to_head(bare_engine: Engine) -> None:
    assert head_revision() == "0011"
    upgrade_database(bare_engine)
    with bare_engine.connect() as conn:
        assert current_revision(conn) == "0011"
    assert _tables(bare_engine) == TABLES


def test_migrations_match_schema_module(engine: Engine) -> None:
    with engine.connect() as conn:
        context = MigrationContext.configure(conn, opts={"compare_type": True})
        assert compare_metadata(context, metadata) == []


def test_downgrade_to_base_and_up_again(engine: Engine) -> None:
    downgrade_database(engine, "base")
    assert _tables(engine) == {"alembic_version"}
    upgrade_database(engine)
    assert _tables(engine) == TABLES


def test_upgrade_from_url_is_idempotent(database_url: URL) -> None:
    upgrade_database(database_url)
    upgrade_database(database_url.render_as_string(hide_password=False))
    engine = create_engine_for(database_url)
    try:
        with engine.connect() as conn:
            assert current_revision(conn) == "0011"
    finally:
        engine.dispose()


def test_engine_settings(engine: Engine) -> None:
    with engine.connect() as conn:
        if engine.dialect.name == "sqlite":
            pragmas = {
                name: conn.exec_driver_sql(f"PRAGMA {name}").scalar_one()
                for name in ("journal_mode", "synchronous", "foreign_keys", "busy_timeout")
            }
            # synchronous 2 == FULL
            assert pragmas == {
                "journal_mode": "wal",
                "synchronous": 2,
                "foreign_keys": 1,
                "busy_timeout": 10_000,
            }
        else:
            assert engine.dialect.driver == "psycopg"
            assert conn.exec_driver_sql("SHOW synchronous_commit").scalar_one() == "on"


def test_bare_postgresql_url_uses_psycopg() -> None:
    engine = create_engine_for("postgresql://u@127.0.0.1:1/db")
    assert engine.dialect.driver == "psycopg"
    engine.dispose()
