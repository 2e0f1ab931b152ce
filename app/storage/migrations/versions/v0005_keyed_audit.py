"""The audit chain keyed: a hash scheme per row, a keyed MAC on each chain head.

Revision ID: 0005
Revises: 0004
Create Date: 2026-12-09

* ``audit_log.hash_scheme``: how the row's hash was made. Every row written before this
  revision is scheme 1 (plain SHA-256, as it was written); rows written from now on are
  scheme 2 (HMAC-SHA-256 under the audit key, ``app.storage.audit``).
* ``audit_heads.mac``: the audit key's MAC of the head's hash, NULL until the chain's first
  keyed row.

Existing rows are kept, not re-keyed. A migration cannot reach the key (it runs before the key
manager exists on PostgreSQL, whose keyring lives in a table migrations create, and from
``wajah restore``); re-keying would mean switching off the append-only triggers, the one act the
log exists to make visible; and it would add nothing: whatever the rows say when they are
re-keyed becomes keyed truth. Instead the first keyed row of a chain MACs its predecessor's
hash, which pins the plain rows before it from then on, and a checkpoint taken after the
upgrade anchors chains that have no keyed row yet.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

revision = "0005"
down_revision = "0004"
branch_labels = None
depends_on = None


def upgrade() -> None:
    # Plain ADD COLUMN (no batch copy): SQLite would drop the append-only triggers with the
    # copied table; PostgreSQL stores a constant default without rewriting the rows.
    op.add_column(
        "audit_log",
        sa.Column("hash_scheme", sa.SmallInteger(), nullable=False, server_default="1"),
    )
    op.add_column("audit_heads", sa.Column("mac", sa.LargeBinary(32), nullable=True))


def downgrade() -> None:
    keyed = (
        op.get_bind()
        .exec_driver_sql("SELECT COUNT(*) FROM audit_log WHERE hash_scheme <> 1")
        .scalar_one()
    )
    if keyed:
        raise RuntimeError(
            f"{keyed} audit rows are hashed under the audit key; revision 0004 cannot verify "
            "them, so the audit log cannot go below revision 0005"
        )
    op.drop_column("audit_heads", "mac")
    op.drop_column("audit_log", "hash_scheme")
