"""The key lifecycle: audit details' DEKs rewrapped by a key rotation.

Revision ID: 0008
Revises: 0007
Create Date: 2026-12-11

* ``audit_detail_keys``: the DEK of an audit row's sealed details, rewrapped under a newer
  version of the org's KEK by ``wajah keys rotate``. The audit row itself never changes (the
  table is append-only, and the hash chain covers the sealed details byte for byte), so the
  rewrapped DEK is stored here and read in place of the blob's own; once the old KEK version is
  destroyed the blob's own copy opens nothing. See ``app.storage.wrapped``.

Hashed references need no column: a reference names the reference-key version it was made
under (``app.crypto.references``).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.storage.schema import UTCDateTime

revision = "0008"
down_revision = "0007"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "audit_detail_keys",
        sa.Column("audit_id", sa.String(40), nullable=False),
        sa.Column("chain", sa.String(40), nullable=False),
        sa.Column("wrapped_dek", sa.LargeBinary(), nullable=False),
        sa.Column("kek_version", sa.Integer(), nullable=False),
        sa.Column("rewrapped_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("audit_id", name=op.f("pk_audit_detail_keys")),
    )
    op.create_index(
        op.f("ix_audit_detail_keys_chain"), "audit_detail_keys", ["chain"], unique=False
    )


def downgrade() -> None:
    rewrapped = op.get_bind().exec_driver_sql("SELECT COUNT(*) FROM audit_detail_keys").scalar_one()
    if rewrapped:
        # Their old KEK version may be destroyed already: dropping the table loses the details.
        raise RuntimeError(
            f"{rewrapped} audit rows open only with a rewrapped DEK; revision 0007 has nowhere "
            "to keep it, so the database cannot go below revision 0008"
        )
    op.drop_index(op.f("ix_audit_detail_keys_chain"), table_name="audit_detail_keys")
    op.drop_table("audit_detail_keys")
