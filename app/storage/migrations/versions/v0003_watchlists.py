"""Shared watchlists with bilateral opt-in.

Revision ID: 0003
Revises: 0002
Create Date: 2026-11-27

A watchlist is owned by one org; other orgs become members only by opting in after an
invitation. Entries carry their contributing org; screening compares a probe only with
entries whose contributor is, at that moment, an opted-in member with sharing enabled.
Entries live in the watchlist's own index namespace, never in an org's.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.storage.schema import UTCDateTime

revision = "0003"
down_revision = "0002"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "watchlists",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("owner_org_id", sa.String(40), nullable=False),
        sa.Column("name", sa.String(200), nullable=False),
        sa.Column("region", sa.String(32), nullable=False),
        sa.Column("model_id", sa.String(128), nullable=False),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("entry_seq", sa.BigInteger(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("closed_at", UTCDateTime(), nullable=True),
        sa.CheckConstraint("status IN ('open', 'closed')", name=op.f("ck_watchlists_status")),
        sa.ForeignKeyConstraint(
            ["owner_org_id"], ["orgs.id"], name=op.f("fk_watchlists_owner_org_id_orgs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_watchlists")),
    )
    op.create_table(
        "watchlist_members",
        sa.Column("watchlist_id", sa.String(40), nullable=False),
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("state", sa.String(16), nullable=False),
        sa.Column("invited_at", UTCDateTime(), nullable=True),
        sa.Column("joined_at", UTCDateTime(), nullable=True),
        sa.Column("left_at", UTCDateTime(), nullable=True),
        sa.CheckConstraint(
            "state IN ('invited', 'active', 'left', 'removed')",
            name=op.f("ck_watchlist_members_state"),
        ),
        sa.ForeignKeyConstraint(
            ["watchlist_id"],
            ["watchlists.id"],
            name=op.f("fk_watchlist_members_watchlist_id_watchlists"),
        ),
        sa.ForeignKeyConstraint(
            ["org_id"], ["orgs.id"], name=op.f("fk_watchlist_members_org_id_orgs")
        ),
        sa.PrimaryKeyConstraint("watchlist_id", "org_id", name=op.f("pk_watchlist_members")),
    )
    op.create_index(op.f("ix_watchlist_members_org_id"), "watchlist_members", ["org_id"])
    op.create_table(
        "watchlist_entries",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("watchlist_id", sa.String(40), nullable=False),
        sa.Column("contributor_org_id", sa.String(40), nullable=False),
        sa.Column("vector_id", sa.BigInteger(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=True),
        sa.Column("dimension", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.String(128), nullable=False),
        sa.Column("hashed_ref", sa.LargeBinary(32), nullable=True),
        sa.Column("reason_code", sa.String(64), nullable=False),
        sa.Column("source", sa.String(16), nullable=False),
        sa.Column("source_embedding_id", sa.String(40), nullable=True),
        sa.Column("status", sa.String(16), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.Column("withdrawn_at", UTCDateTime(), nullable=True),
        sa.CheckConstraint(
            "status IN ('active', 'withdrawn')", name=op.f("ck_watchlist_entries_status")
        ),
        sa.ForeignKeyConstraint(
            ["watchlist_id"],
            ["watchlists.id"],
            name=op.f("fk_watchlist_entries_watchlist_id_watchlists"),
        ),
        sa.ForeignKeyConstraint(
            ["contributor_org_id"],
            ["orgs.id"],
            name=op.f("fk_watchlist_entries_contributor_org_id_orgs"),
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_watchlist_entries")),
        sa.UniqueConstraint(
            "watchlist_id", "vector_id", name=op.f("uq_watchlist_entries_watchlist_id_vector_id")
        ),
    )
    op.create_index(
        op.f("ix_watchlist_entries_source_embedding_id"),
        "watchlist_entries",
        ["source_embedding_id"],
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_watchlist_entries_source_embedding_id"), table_name="watchlist_entries")
    op.drop_table("watchlist_entries")
    op.drop_index(op.f("ix_watchlist_members_org_id"), table_name="watchlist_members")
    op.drop_table("watchlist_members")
    op.drop_table("watchlists")
