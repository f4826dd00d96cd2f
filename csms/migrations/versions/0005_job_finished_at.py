"""firmware_job.finished_at: when a job reached a terminal status

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-01 09:00:00.000000

Jobs finished before this revision get their last update time (when their terminal status
was stored).
"""
from __future__ import annotations

from collections.abc import Sequence

import sqlalchemy as sa

import billing.sqltypes
from alembic import op


revision: str = '0005'
down_revision: str | None = '0004'
branch_labels: str | Sequence[str] | None = None
depends_on: str | Sequence[str] | None = None


def upgrade() -> None:
    with op.batch_alter_table('firmware_job', schema=None) as batch_op:
        batch_op.add_column(sa.Column('finished_at', billing.sqltypes.UtcDateTime(timezone=True),
                                      nullable=True))
    job = sa.table('firmware_job', sa.column('finished', sa.Boolean()),
                   sa.column('finished_at'), sa.column('updated_at'))
    op.execute(job.update().where(job.c.finished.is_(True))
               .values(finished_at=job.c.updated_at))


def downgrade() -> None:
    with op.batch_alter_table('firmware_job', schema=None) as batch_op:
        batch_op.drop_column('finished_at')
