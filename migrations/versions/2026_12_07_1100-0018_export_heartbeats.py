"""export heartbeats: a worker that dies while building an export no longer leaves it
``running`` for good

Revision ID: 0018
Revises: 0017
Create Date: 2026-12-07 11:00:00

``adapter_exports.heartbeat_at``: renewed every few seconds by the worker building the
export; the scheduler's sweep queues an export whose heartbeat stopped anew (and sends it
to a worker again). ``attempt`` counts the workers that took it: only the latest attempt
may finish it, and an export that lost its worker ``max_attempts`` times fails.
"""
from collections.abc import Sequence

import sqlalchemy as sa
from alembic import op

revision: str = '0018'
down_revision: str | None = '0017'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    op.add_column('adapter_exports',
                  sa.Column('heartbeat_at', sa.DateTime(timezone=True), nullable=True))
    op.add_column('adapter_exports',
                  sa.Column('attempt', sa.Integer(), server_default='0', nullable=False))


def downgrade() -> None:
    op.drop_column('adapter_exports', 'attempt')
    op.drop_column('adapter_exports', 'heartbeat_at')
