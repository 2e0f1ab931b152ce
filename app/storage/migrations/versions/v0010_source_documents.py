"""Onboarding: sealed source documents (the ID-document side of POST /v1/compare).

Revision ID: 0010
Revises: 0009
Create Date: 2026-12-03

* ``source_documents``: a reference image marked as a document, sealed like a frame (the
  sealed payload lives in the object store under ``object_key``, the DEK wrapped by the org
  KEK in ``wrapped_dek``), never served, erased with its
  subject and swept after the org's ``retention.source_documents_days`` (90 by default).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.storage.schema import UTCDateTime

revision = "0010"
down_revision = "0009"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "source_documents",
        sa.Column("id", sa.String(40), nullable=False),
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("subject_id", sa.String(128), nullable=True),
        sa.Column("object_key", sa.String(200), nullable=False),
        sa.Column("wrapped_dek", sa.LargeBinary(), nullable=False),
        sa.Column("kek_version", sa.Integer(), nullable=False),
        sa.Column("media_type", sa.String(32), nullable=False),
        sa.Column("byte_size", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["orgs.id"], name=op.f("fk_source_documents_org_id_orgs")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_source_documents")),
        sa.UniqueConstraint("object_key", name=op.f("uq_source_documents_object_key")),
    )
    op.create_index(
        "ix_source_documents_org_id_subject_id", "source_documents", ["org_id", "subject_id"]
    )
    op.create_index("ix_source_documents_created_at", "source_documents", ["created_at"])


def downgrade() -> None:
    op.drop_index("ix_source_documents_created_at", table_name="source_documents")
    op.drop_index("ix_source_documents_org_id_subject_id", table_name="source_documents")
    op.drop_table("source_documents")
