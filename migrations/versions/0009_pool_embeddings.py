"""pool embeddings: a pool's teacher embeddings built by a worker when the pool is created with a teacher (pool_embeddings)

Revision ID: 0009
Revises: 0008
Create Date: 2026-12-09
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0009"
down_revision = "0008"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "pool_embeddings",
        sa.Column("id", sa.String(length=40), nullable=False),
        sa.Column("pool_id", sa.String(length=40), nullable=False),
        sa.Column("teacher", sa.String(length=300), nullable=False),
        sa.Column("views", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("result", sa.JSON(), nullable=True),
        sa.Column("error_code", sa.String(length=64), nullable=True),
        sa.Column("error_message", sa.Text(), nullable=True),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(length=200), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(), nullable=True),
        sa.Column("publish_due_at", sa.DateTime(), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["pool_id"], ["pools.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("id"),
    )
    op.create_index(op.f("ix_pool_embeddings_pool_id"), "pool_embeddings", ["pool_id"], unique=False)
    op.create_index(op.f("ix_pool_embeddings_status"), "pool_embeddings", ["status"], unique=False)
    op.create_index(op.f("ix_pool_embeddings_publish_due_at"), "pool_embeddings", ["publish_due_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_pool_embeddings_publish_due_at"), table_name="pool_embeddings")
    op.drop_index(op.f("ix_pool_embeddings_status"), table_name="pool_embeddings")
    op.drop_index(op.f("ix_pool_embeddings_pool_id"), table_name="pool_embeddings")
    op.drop_table("pool_embeddings")
