"""the transactional outbox: jobs.publish_due_at

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-28
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("publish_due_at", sa.DateTime(), nullable=True))
        batch_op.create_index(batch_op.f("ix_jobs_publish_due_at"), ["publish_due_at"], unique=False)
    # A job queued before this revision may be one whose message was lost: let the reaper publish every queued job once
    # more (a duplicate message is harmless, the worker's claim drops it). updated_at is already naive UTC, as the column.
    op.execute(sa.text("UPDATE jobs SET publish_due_at = updated_at WHERE status = 'queued'"))


def downgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_index(batch_op.f("ix_jobs_publish_due_at"))
        batch_op.drop_column("publish_due_at")
