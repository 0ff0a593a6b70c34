"""adapter exports: a merged model and a GGUF LoRA adapter per version, on request

Revision ID: 0015
Revises: 0014
Create Date: 2026-12-07 08:00:00

``adapter_exports``: one row per version and format (``merged``, ``gguf``), built by a
worker of the base model's class (``queued`` → ``running`` → ``succeeded``/``failed``),
its files stored beside the version under ``exports/<format>/`` with their sha256s in an
export manifest. Row-level security as on every tenant table.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0015'
down_revision: str | None = '0014'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

POLICY = "tenant_isolation"
ID = sa.String(length=64, collation='C')


def upgrade() -> None:
    op.create_table(
        'adapter_exports',
        sa.Column('id', ID, nullable=False),
        sa.Column('tenant_id', ID, nullable=False),
        sa.Column('version_id', ID, nullable=False),
        sa.Column('format', sa.String(length=16), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('object_prefix', sa.String(length=512), nullable=False),
        sa.Column('files', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column('error', postgresql.JSONB(astext_type=sa.Text()), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('started_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('finished_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ondelete='CASCADE',
                                name=op.f('fk_adapter_exports_tenant_id_tenants')),
        sa.ForeignKeyConstraint(['version_id'], ['adapter_versions.id'], ondelete='CASCADE',
                                name=op.f('fk_adapter_exports_version_id_adapter_versions')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_adapter_exports')),
        sa.UniqueConstraint('version_id', 'format', name=op.f('uq_adapter_exports_version_id')),
    )
    op.execute("ALTER TABLE adapter_exports ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE adapter_exports FORCE ROW LEVEL SECURITY")
    match = "tenant_id = current_setting('loramill.tenant_id', true) COLLATE \"C\""
    op.execute(f"CREATE POLICY {POLICY} ON adapter_exports USING ({match}) WITH CHECK ({match})")


def downgrade() -> None:
    op.drop_table('adapter_exports')
