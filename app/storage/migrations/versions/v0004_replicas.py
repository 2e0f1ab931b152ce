"""Replicas: what lived in a server's files moves into the database.

Revision ID: 0004
Revises: 0003
Create Date: 2026-12-02

* ``keyring_state``: the key manager's bookkeeping (KEKs wrapped under the root key, or
  handles of HSM-held ones; versions, primary, wrap reservations), one JSON document per
  keyring, changed under a row lock so every replica sees one truth.
* ``sealed_objects``: sealed frame payloads (nonce || ciphertext || tag), the frame store of
  a PostgreSQL deployment; the wrapped DEKs stay in ``frames``.
* ``watchlists.change_seq``: the position of a watchlist's index namespace, bumped by every
  change of its entries, memberships or members' sharing settings, so a replica can tell
  whether its copy is current.
* ``idempotency_keys.owner``: the replica that reserved a key, so a replica restarting on its
  home releases its own dead reservations at once and leaves other replicas' alone.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.storage.schema import UTCDateTime

revision = "0004"
down_revision = "0003"
branch_labels = None
depends_on = None


def upgrade() -> None:
    op.create_table(
        "keyring_state",
        sa.Column("name", sa.String(64), nullable=False),
        sa.Column("state", sa.Text(), nullable=False),
        sa.Column("updated_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("name", name=op.f("pk_keyring_state")),
    )
    op.create_table(
        "sealed_objects",
        sa.Column("key", sa.String(200), nullable=False),
        sa.Column("data", sa.LargeBinary(), nullable=False),
        sa.Column("created_at", UTCDateTime(), nullable=False),
        sa.PrimaryKeyConstraint("key", name=op.f("pk_sealed_objects")),
    )
    op.create_index(
        op.f("ix_sealed_objects_created_at"), "sealed_objects", ["created_at"], unique=False
    )
    with op.batch_alter_table("watchlists") as batch:
        batch.add_column(
            sa.Column("change_seq", sa.BigInteger(), nullable=False, server_default="0")
        )
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.add_column(sa.Column("owner", sa.String(64), nullable=True))


def downgrade() -> None:
    with op.batch_alter_table("idempotency_keys") as batch:
        batch.drop_column("owner")
    with op.batch_alter_table("watchlists") as batch:
        batch.drop_column("change_seq")
    op.drop_index(op.f("ix_sealed_objects_created_at"), table_name="sealed_objects")
    op.drop_table("sealed_objects")
    op.drop_table("keyring_state")
