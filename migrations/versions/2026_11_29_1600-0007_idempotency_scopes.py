"""idempotency keys: a scope per tenant or for operators; stored secrets purged

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29 16:00:00

Keys were scoped by ``tenant_id`` alone, so operators' requests (no tenant) could not
use them. ``scope`` is the tenant's id, or ``admin`` for operators; ``tenant_id`` stays
for row-level security and is NULL on operators' rows (which the app role never sees).
Responses stored before this revision could hold a new API key's secret: they are
deleted (their requests simply run again if retried).
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0007'
down_revision: str | None = '0006'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.execute("DELETE FROM idempotency_keys WHERE response -> 'body' ->> 'secret' IS NOT NULL")
    op.add_column('idempotency_keys', sa.Column('scope', sa.String(64, collation='C'),
                                                nullable=True))
    op.execute("UPDATE idempotency_keys SET scope = tenant_id")
    op.alter_column('idempotency_keys', 'scope', nullable=False)
    op.drop_constraint('pk_idempotency_keys', 'idempotency_keys', type_='primary')
    op.create_primary_key('pk_idempotency_keys', 'idempotency_keys', ['scope', 'key'])
    op.alter_column('idempotency_keys', 'tenant_id', nullable=True)


def downgrade() -> None:
    op.execute("DELETE FROM idempotency_keys WHERE tenant_id IS NULL")
    op.alter_column('idempotency_keys', 'tenant_id', nullable=False)
    op.drop_constraint('pk_idempotency_keys', 'idempotency_keys', type_='primary')
    op.create_primary_key('pk_idempotency_keys', 'idempotency_keys', ['tenant_id', 'key'])
    op.drop_column('idempotency_keys', 'scope')
