"""Erasure that holds: subject keys, the erasure log, idempotency records linked to subjects.

Revision ID: 0006
Revises: 0005
Create Date: 2026-12-10

* ``subject_keys``: one data key per subject (32 random bytes) wrapped under the org's
  *subject-key KEK* (a KEK family of its own, ``<org_id>/subject-keys`` in the key manager).
  The subject's PII and frame DEKs are sealed under it; erasure deletes the row. See
  ``app.services.rights`` for why a key per subject, under a KEK of its own.
* ``erasure_log``: one row per erased subject (org, subject id, when, the receipt's SHA-256;
  no PII). ``wajah restore`` carries it over a restore and erases again whatever the older
  backup still holds. ``shredded_at``: when the subject-key KEK versions that could still
  open backup copies of the subject's key were destroyed.
* ``idempotency_keys.subject_id``: the subject a stored answer is about, so an erasure deletes
  it (a replay runs again and meets the erasure instead of the old body).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.storage.schema import UTCDateTime

revision = "0006"
down_revision = "0005"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "subject_keys",
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("subject_id", sa.String(128), nullable=False),
        sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
        sa.Column("kek_version", sa.Integer(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], name=op.f("fk_subject_keys_org_id_orgs")),
        sa.PrimaryKeyConstraint("org_id", "subject_id", name=op.f("pk_subject_keys")),
    )
    op.create_table(
        "erasure_log",
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("subject_id", sa.String(128), nullable=False),
        sa.Column("erased_at", UTCDateTime(), nullable=False),
        sa.Column("receipt_sha256", sa.String(64), nullable=False),
        sa.Column("shredded_at", UTCDateTime(), nullable=True),
        sa.PrimaryKeyConstraint("org_id", "subject_id", name=op.f("pk_erasure_log")),
    )
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.add_column(sa.Column("subject_id", sa.String(128), nullable=True))
    op.create_index(
        op.f("ix_idempotency_keys_org_id_subject_id"),
        "idempotency_keys",
        ["org_id", "subject_id"],
        unique=False,
    )


def downgrade() -> None:
    op.drop_index(op.f("ix_idempotency_keys_org_id_subject_id"), table_name="idempotency_keys")
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.drop_column("subject_id")
    op.drop_table("erasure_log")
    op.drop_table("subject_keys")
