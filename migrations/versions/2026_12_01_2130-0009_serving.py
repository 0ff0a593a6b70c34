"""serving: inference usage per tenant, model and day; deleting a fine-tuned model;
checkpoint files' sha256s; base models without a chat template

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-01 21:30:00

``inference_usage`` adds up every inference request's tokens per tenant, model and UTC
day (row-level security as on every tenant table, migration 0006).
``adapter_versions.model_deleted_at`` is set by ``DELETE /v1/models/{fine_tuned_model}``:
the model is no longer listed or callable; the version's files stay downloadable.
``job_checkpoints.files`` records each checkpoint file's sha256, which serving checks a
checkpoint model (``ft:…:ckpt-step-N``) against; older checkpoints have none and are
not served. ``base_models.has_chat_template``: job creation refuses chat and preference
data on a base without one (models registered before read as having one, as they were
treated, until registered again).
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0009'
down_revision: str | None = '0008'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None

POLICY = "tenant_isolation"


def upgrade() -> None:
    op.create_table(
        'inference_usage',
        sa.Column('tenant_id', sa.String(length=64, collation='C'), nullable=False),
        sa.Column('day', sa.Date(), nullable=False),
        sa.Column('model', sa.String(length=400), nullable=False),
        sa.Column('requests', sa.BigInteger(), nullable=False),
        sa.Column('prompt_tokens', sa.BigInteger(), nullable=False),
        sa.Column('completion_tokens', sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(['tenant_id'], ['tenants.id'], ondelete='CASCADE',
                                name=op.f('fk_inference_usage_tenant_id_tenants')),
        sa.PrimaryKeyConstraint('tenant_id', 'day', 'model', name=op.f('pk_inference_usage')),
    )
    op.execute("ALTER TABLE inference_usage ENABLE ROW LEVEL SECURITY")
    op.execute("ALTER TABLE inference_usage FORCE ROW LEVEL SECURITY")
    match = "tenant_id = current_setting('loramill.tenant_id', true) COLLATE \"C\""
    op.execute(f"CREATE POLICY {POLICY} ON inference_usage USING ({match}) WITH CHECK ({match})")
    op.add_column('adapter_versions', sa.Column('model_deleted_at',
                                                sa.DateTime(timezone=True), nullable=True))
    op.add_column('job_checkpoints', sa.Column('files', postgresql.JSONB(), nullable=False,
                                               server_default='[]'))
    op.add_column('base_models', sa.Column('has_chat_template', sa.Boolean(), nullable=False,
                                           server_default=sa.true()))


def downgrade() -> None:
    op.drop_column('base_models', 'has_chat_template')
    op.drop_column('job_checkpoints', 'files')
    op.drop_column('adapter_versions', 'model_deleted_at')
    op.drop_table('inference_usage')
