"""a tenant's price table for estimates

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-07 04:00:00

``tenants.prices``: what an operator set for the tenant (core/tenants/prices.py: a
currency and, per GPU class, a price per GPU-hour and per million trained tokens); none:
the deployment's default (``LORAMILL_PRICES``), or no cost in estimates.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0011'
down_revision: str | None = '0010'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('tenants', sa.Column(
        'prices', postgresql.JSONB(astext_type=sa.Text()), nullable=True))


def downgrade() -> None:
    op.drop_column('tenants', 'prices')
