"""jobs.heartbeat_at (the worker's last sign of life), jobs.estimated_seconds (the duration estimated at submission) and
service_counters (lease losses and requeues, for /metrics)

Revision ID: 0004
Revises: 0003
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("heartbeat_at", sa.DateTime(), nullable=True))
        batch_op.add_column(sa.Column("estimated_seconds", sa.Float(), nullable=True))
    op.create_table(
        "service_counters",
        sa.Column("name", sa.String(length=64), nullable=False),
        sa.Column("value", sa.BigInteger(), nullable=False),
        sa.PrimaryKeyConstraint("name"),
    )


def downgrade() -> None:
    op.drop_table("service_counters")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("estimated_seconds")
        batch_op.drop_column("heartbeat_at")
