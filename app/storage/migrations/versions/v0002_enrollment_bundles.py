"""Enrollment bundles: one row per accepted frame, grouped by the bundle the API enrolled.

Revision ID: 0002
Revises: 0001
Create Date: 2026-11-27

A capture bundle of N frames yields up to N embeddings; each is an ``enrollments`` row with
its own vector id, seq and hashed reference (the index and the change stream work per
vector). ``bundle_id`` is what the API calls the enrollment id: retiring it retires every
row of the bundle.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0002"
down_revision = "0001"
branch_labels = None
depends_on = None


def upgrade() -> None:
    with op.batch_alter_table("enrollments") as batch:
        batch.add_column(sa.Column("bundle_id", sa.String(40), nullable=True))
        batch.add_column(sa.Column("frame_index", sa.Integer(), nullable=True))
    op.create_index(
        op.f("ix_enrollments_bundle_id"), "enrollments", ["org_id", "bundle_id"], unique=False
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_enrollments_bundle_id"), table_name="enrollments")
    with op.batch_alter_table("enrollments") as batch:
        batch.drop_column("frame_index")
        batch.drop_column("bundle_id")
