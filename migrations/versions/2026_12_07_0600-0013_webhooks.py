"""webhooks: tenants' endpoints and the deliveries of their jobs' end events

Revision ID: 0013
Revises: 0012
Create Date: 2026-12-07 06:00:00

``webhook_endpoints``: a tenant's URL, the event types it takes and its signing secret
(and, for a day after a rotation that asked for it, the previous one).
``webhook_deliveries``: one event for one endpoint, written in the transaction that ended
the job (an outbox), sent by the scheduler with exponential retries; the endpoint's
delivery log. Row-level security as on every tenant table.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0013'
down_revision: str | None = '0012'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

POLICY = "tenant_isolation"
ID = sa.String(length=64, collation='C')


def upgrade() -> None:
    op.create_table(
        'webhook_endpoints',
        sa.Column('id', ID, nullable=False),
        sa.Column('tenant_id', ID, nullable=False),
        sa.Column('url', sa.String(length=2048), nullable=False),
        sa.Column('event_types', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column('name', sa.String(length=200), nullable=False),
        sa.Column('secret', sa.String(length=100), nullable=False),
        sa.Column('previous_secret', sa.String(length=100), nullable=True),
        sa.Column('previous_secret_expires_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('updated_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('deleted_at', sa.DateTime(timezone=True), nullable=True),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ondelete='CASCADE',
                                name=op.f('fk_webhook_endpoints_tenant_id_tenants')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_endpoints')),
    )
    op.create_index('ix_webhook_endpoints_tenant_id_id', 'webhook_endpoints',
                    ['tenant_id', 'id'])
    op.create_table(
        'webhook_deliveries',
        sa.Column('id', ID, nullable=False),
        sa.Column('tenant_id', ID, nullable=False),
        sa.Column('endpoint_id', ID, nullable=False),
        sa.Column('event_id', ID, nullable=False),
        sa.Column('event_type', sa.String(length=64), nullable=False),
        sa.Column('payload', postgresql.JSONB(astext_type=sa.Text()), nullable=False),
        sa.Column('status', sa.String(length=16), nullable=False),
        sa.Column('attempts', sa.Integer(), nullable=False),
        sa.Column('next_attempt_at', sa.DateTime(timezone=True), nullable=False),
        sa.Column('last_attempt_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('last_status_code', sa.Integer(), nullable=True),
        sa.Column('last_error', sa.Text(), nullable=True),
        sa.Column('delivered_at', sa.DateTime(timezone=True), nullable=True),
        sa.Column('created_at', sa.DateTime(timezone=True), nullable=False),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ondelete='CASCADE',
                                name=op.f('fk_webhook_deliveries_tenant_id_tenants')),
        sa.ForeignKeyConstraint(
            ['endpoint_id'], ['webhook_endpoints.id'], ondelete='CASCADE',
            name=op.f('fk_webhook_deliveries_endpoint_id_webhook_endpoints')),
        sa.PrimaryKeyConstraint('id', name=op.f('pk_webhook_deliveries')),
    )
    op.create_index('ix_webhook_deliveries_endpoint_id_id', 'webhook_deliveries',
                    ['endpoint_id', 'id'])
    op.create_index('ix_webhook_deliveries_due', 'webhook_deliveries', ['next_attempt_at'],
                    postgresql_where=sa.text("status = 'pending'"))
    match = "tenant_id = current_setting('loramill.tenant_id', true) COLLATE \"C\""
    for table in ('webhook_endpoints', 'webhook_deliveries'):
        op.execute(f"ALTER TABLE {table} ENABLE ROW LEVEL SECURITY")
        op.execute(f"ALTER TABLE {table} FORCE ROW LEVEL SECURITY")
        op.execute(f"CREATE POLICY {POLICY} ON {table} USING ({match}) WITH CHECK ({match})")


def downgrade() -> None:
    op.drop_table('webhook_deliveries')
    op.drop_table('webhook_endpoints')
