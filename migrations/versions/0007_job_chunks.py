"""one job over many workers: job_chunks (a job's synthesis in chunks, each leased and outboxed like a job) and
jobs.synthesis_chunks (how many, once the job's synthesis is split)

Revision ID: 0007
Revises: 0006
Create Date: 2026-11-29
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.add_column(sa.Column("synthesis_chunks", sa.Integer(), nullable=True))
    op.create_table(
        "job_chunks",
        sa.Column("job_id", sa.String(length=40), nullable=False),
        sa.Column("chunk_index", sa.Integer(), nullable=False),
        sa.Column("first_batch", sa.Integer(), nullable=False),
        sa.Column("batch_count", sa.Integer(), nullable=False),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("progress", sa.Float(), nullable=False),
        sa.Column("attempts", sa.Integer(), nullable=False),
        sa.Column("lease_owner", sa.String(length=200), nullable=True),
        sa.Column("lease_expires_at", sa.DateTime(), nullable=True),
        sa.Column("publish_due_at", sa.DateTime(), nullable=True),
        sa.Column("storage_key", sa.String(length=500), nullable=True),
        sa.Column("size", sa.BigInteger(), nullable=True),
        sa.Column("sha256", sa.String(length=64), nullable=True),
        sa.Column("created_at", sa.DateTime(), nullable=False),
        sa.Column("started_at", sa.DateTime(), nullable=True),
        sa.Column("finished_at", sa.DateTime(), nullable=True),
        sa.Column("updated_at", sa.DateTime(), nullable=False),
        sa.ForeignKeyConstraint(["job_id"], ["jobs.id"], ondelete="CASCADE"),
        sa.PrimaryKeyConstraint("job_id", "chunk_index"),
    )
    op.create_index(op.f("ix_job_chunks_status"), "job_chunks", ["status"], unique=False)
    op.create_index(op.f("ix_job_chunks_publish_due_at"), "job_chunks", ["publish_due_at"], unique=False)


def downgrade() -> None:
    op.drop_index(op.f("ix_job_chunks_publish_due_at"), table_name="job_chunks")
    op.drop_index(op.f("ix_job_chunks_status"), table_name="job_chunks")
    op.drop_table("job_chunks")
    with op.batch_alter_table("jobs", schema=None) as batch_op:
        batch_op.drop_column("synthesis_chunks")
