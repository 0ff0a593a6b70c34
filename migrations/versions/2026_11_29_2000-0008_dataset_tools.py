"""datasets with tools: which files need a template that renders them, which models have one

Revision ID: 0008
Revises: 0007
Create Date: 2026-11-29 20:00:00

``files.tool_examples`` counts the examples that use tools or tool calls (the upload's
report); ``base_models.renders_tools`` says whether the model's chat template renders
them. Job creation refuses the first on a model without the second. Models registered
before this revision read as not rendering tools until registered again (the local stack
registers its model at every start).
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0008'
down_revision: str | None = '0007'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('files', sa.Column('tool_examples', sa.Integer(), nullable=False,
                                     server_default='0'))
    op.add_column('base_models', sa.Column('renders_tools', sa.Boolean(), nullable=False,
                                           server_default=sa.false()))


def downgrade() -> None:
    op.drop_column('base_models', 'renders_tools')
    op.drop_column('files', 'tool_examples')
