"""adapter aliases; deleting adapter versions

Revision ID: 0012
Revises: 0011
Create Date: 2026-12-07 05:00:00

``adapter_aliases``: a name per adapter (``production``, ``staging``, any name) pointing
at one of its versions; ``history`` holds the versions it pointed at before, newest last,
which a rollback returns to (row-level security as on every tenant table). The unused
``adapter_versions.aliases`` array goes. ``adapter_versions.deleted_at``: a deleted
version (by its owner, or pruned by the retention setting) is not listed, downloaded,
called or continued from, and its files are removed; its number is never reused.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0012'
down_revision: str | None = '0011'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

POLICY = "tenant_isolation"


def upgrade() -> None:
    op.create_table(
        'adapter_aliases',
        sa.Column('id', sa.String(length=64, collation='C'), nullable=False),
        sa.Column('tenant_id', sa.String(length=64, collation='C'), nullable=False),
        sa.Column('adapter_id', sa.String(length=64, collation='C'), nullable=False),
        sa.Column('name', sa.String(length=64), nullable=False),
        sa.Column('version_id', sa.String(length=64, collation='C'), nullable=False),
        sa.Column('history', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ondelete='CASCADE',
                                name=op.f('fk_adapter_aliases_tenant_id_tenants')),
        sa.ForeignKeyConstraint(['adapter_id'], ['adapters.id'], ondelete='CASCADE',
                                name=op.f('fk_adapter_aliases_adapter_id_adapters')),
        sa.ForeignKeyConstraint(['version_id'], ['adapter_versions.id'],
                                name=op.f('fk_adapter_aliases_version_id_adapter_versions')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_adapter_aliases')),
        sa.UniqueConstraint('adapter_id', 'name',
                            name=op.f('uq_adapter_aliases_adapter_id')),
    )
    op.create_index('ix_adapter_aliases_version_id', 'adapter_aliases', ['version_id'])
    op.execute("ALTER TABLE adapter_aliases ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE adapter_aliases FORCE ROW LEVEL SECURITY")
    match = "tenant_id = current_setting('loramill.tenant_id', true) COLLATE \"C\""
    op.execute(f"CREATE POLICY {POLICY} ON adapter_aliases USING ({match}) WITH CHECK ({match})")
    op.drop_column('adapter_versions', 'aliases')
    op.add_column('adapter_versions', sa.Column('deleted_at', sa.DateTime(timezone=True),
                                                nullable=True))


def downgrade() -> None:
    op.drop_column('adapter_versions', 'deleted_at')
    op.add_column('adapter_versions', sa.Column(
        'aliases', postgresql.ARRAY(sa.String(length=64)), nullable=False,
        server_default='{}'))
    op.drop_table('adapter_aliases')
