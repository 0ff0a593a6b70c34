"""base models in object storage

Revision ID: 0016
Revises: 0015
Create Date: 2026-12-07 09:00:00

``base_models.files``: for a model registered from object storage (``source_uri``
``s3://<bucket>/<prefix>``, uploaded by ``register-model --upload`` or registered as a
prefix), the name, bytes and sha256 of each of its files, which a worker's or the API's
local model cache checks what it downloads against. None: a model registered by a path
every machine has (as before).
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0016'
down_revision: str | None = '0015'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('base_models', sa.Column(
        'files', postgresql.JSONB(astext_type=sa.Text()), nullable=True))


def downgrade() -> None:
    op.drop_column('base_models', 'files')
