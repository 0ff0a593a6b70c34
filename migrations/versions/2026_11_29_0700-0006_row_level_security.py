"""row-level security on every tenant table

Revision ID: 0006
Revises: 0005
Create Date: 2026-11-29 07:00:00

Each tenant table gets RLS, enabled and forced (so the tables' owner is held to it too,
unless it has BYPASSRLS), and one policy: a row is visible and writable only when its
tenant is the transaction's ``loramill.tenant_id`` (set with ``SET LOCAL`` by
core.db.tenant_scope). Unset, the setting is NULL and no row matches.
"""
from collections.abc import Sequence

from alembic import op

revision: str = '0006'
down_revision: str | None = '0005'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

# table -> the column naming its tenant
TENANT_TABLES = {
    "tenants": "id",
    "api_keys": "tenant_id",
    "files": "tenant_id",
    "fine_tuning_jobs": "tenant_id",
    "job_events": "tenant_id",
    "job_checkpoints": "tenant_id",
    "adapters": "tenant_id",
    "adapter_versions": "tenant_id",
    "idempotency_keys": "tenant_id",
    "audit_log": "tenant_id",
}
POLICY = "tenant_isolation"


def upgrade() -> None:
    for table, column in TENANT_TABLES.items():
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        # COLLATE "C": ids compare byte-wise (core.models.base.IdString), and the index on
        # the tenant column stays usable.
        match = f"{column} = current_setting('loramill.tenant_id', true) COLLATE \"C\""
        op.execute(f"CREATE POLICY {POLICY} ON {table} USING ({match}) WITH CHECK ({match})")


def downgrade() -> None:
    for table in TENANT_TABLES:
        op.execute(f"DROP POLICY IF EXISTS {POLICY} ON {table}")
        op.execute(f"ALTER TABLE {table} NO FORCE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} DISABLE ROW LEVEL SECURITY")
