"""Migrations: an empty database goes to head, back to base and up again, and the
models and migrations agree (autogenerate finds nothing to do)."""

from __future__ import annotations

import uuid

import psycopg
from alembic.autogenerate import compare_metadata
from alembic.migration import MigrationContext
from sqlalchemy import create_engine, inspect

from core.kit import migrate
from core.kit.db import normalize_url
from core.tables import Base
from tests.conftest import StackInfo, with_database


def test_upgrade_downgrade_upgrade_and_no_drift(stack: StackInfo) -> None:
    name = f"migrations_{uuid.uuid4().hex[:8]}"
    admin_url = with_database(stack.admin_database_url, "postgres")
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f'create database "{name}"')
    url = with_database(stack.admin_database_url, name)
    engine = create_engine(normalize_url(url))
    try:
        migrate.upgrade(url)
        tables = set(inspect(engine).get_table_names())
        assert {"tenants", "api_keys", "files", "base_models", "fine_tuning_jobs",
                "job_events"} <= tables
        migrate.downgrade(url, "base")
        assert set(inspect(engine).get_table_names()) <= {"alembic_version"}
        migrate.upgrade(url)
        with engine.connect() as conn:
            diff = compare_metadata(MigrationContext.configure(conn, opts={
                "compare_type": True}), Base.metadata)
        assert diff == [], f"models and migrations differ: {diff}"
    finally:
        engine.dispose()
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f'drop database "{name}" with (force)')
