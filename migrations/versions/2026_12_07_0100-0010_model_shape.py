"""base models' shapes for the memory model; an operator's GPU class is pinned

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-07 01:00:00

``base_models.shape`` holds what core/base_models/memory.py needs of the model's
config.json (hidden size, layers, heads, vocabulary…), read at registration; a job's GPU
class is then chosen from its predicted peak memory with the job's own settings (LoRA rank
and targets, max_seq_len). Models registered before have none and keep their class.
``base_models.gpu_class_pinned``: the operator chose the class (``--gpu-class``); jobs on
the model take it, or a larger one if their prediction needs it.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op
from sqlalchemy.dialects import postgresql

revision: str = '0010'
down_revision: str | None = '0009'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('base_models', sa.Column(
        'shape', postgresql.JSONB(astext_type=sa.Text()), nullable=True))
    op.add_column('base_models', sa.Column(
        'gpu_class_pinned', sa.Boolean(), server_default=sa.false(), nullable=False))


def downgrade() -> None:
    op.drop_column('base_models', 'gpu_class_pinned')
    op.drop_column('base_models', 'shape')
