"""Onboarding: active liveness challenges (single-use nonces).

Revision ID: 0011
Revises: 0010
Create Date: 2026-12-03

* ``liveness_challenges``: a challenge's nonce, stored only as its SHA-256, the head
  movements it asks for, when it expires (about two minutes) and when it was used (once).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.storage.schema import UTCDateTime

revision = "0011"
down_revision = "0010"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "liveness_challenges",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("nonce_sha256", sa.String(64), nullable=False),
        sa.Column("sequence", sa.JSON(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("expires_at", UTCDateTime(), nullable=False),
        sa.Column("used_at", UTCDateTime(), nullable=True),
        sa.ForeignKeyConstraint(
            ["org_id"], ["orgs.id"], name=op.f("fk_liveness_challenges_org_id_orgs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_liveness_challenges")),
        sa.UniqueConstraint("nonce_sha256", name=op.f("uq_liveness_challenges_nonce_sha256")),
    )
    op.create_index(
        op.f("ix_liveness_challenges_expires_at"),
        "liveness_challenges",
        ["expires_at"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_liveness_challenges_expires_at"), table_name="liveness_challenges")
    op.drop_table("liveness_challenges")
