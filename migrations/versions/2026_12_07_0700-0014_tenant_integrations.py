"""a tenant's integration credentials

Revision ID: 0014
Revises: 0013
Create Date: 2026-12-07 07:00:00

``tenants.integrations``: what a tenant set for its jobs' ``integrations``, by type
(``{"wandb": {"api_key": ..., "base_url": ...}}``): the key its runs log with, read by
the worker that runs the job. None: the deployment's own, if any.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0014'
down_revision: str | None = '0013'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('tenants', sa.Column(
        'integrations', postgresql.JSONB(astext_type=sa.Text()), nullable=True))


def downgrade() -> None:
    op.drop_column('tenants', 'integrations')
