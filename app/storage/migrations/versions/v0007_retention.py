"""Retention for every data class, org closure, and an audit log that can lose its oldest rows.

Revision ID: 0007
Revises: 0006
Create Date: 2026-12-11

* ``request_log``: one row per authenticated API request (org, time, request id, method,
  route *template*, status, latency, key id). No path, no query, no body, no subject id.
  Swept after the org's ``retention.request_logs_days`` (90 by default).
* ``org_closures``: an org closed by ``wajah orgs close`` (keys revoked at once) and when its
  data is purged and its keys destroyed (``purge_after``, the grace period later), then
  ``purged_at`` and the receipt's SHA-256.
* ``audit_anchors``: per audit chain, the last row purged by retention (seq and hash, the
  hash scheme of that row) with a MAC under the audit chain key and an Ed25519 signature by
  the checkpoint key. A chain whose first rows were purged verifies from its anchor.
* The append-only guard moves with it: a DELETE of an audit row is refused unless the row is
  at or below its chain's anchor (SQLite trigger; PostgreSQL trigger function). On PostgreSQL
  the purge runs through ``audit_log_purge_anchored(chain)``, ``SECURITY DEFINER``, so an app
  role without DELETE on ``audit_log`` (``app.storage.roles``) can purge only what an anchor
  covers. Anchors only move forward and are never deleted (triggers on both databases).
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.storage.schema import UTCDateTime

revision = "0007"
down_revision = "0006"
branch_labels = None
depends_on = None

_APPEND_ONLY = "audit_log is append-only"
_ANCHORED = (
    "EXISTS (SELECT 1 FROM audit_anchors a WHERE a.chain = OLD.chain "
    "AND OLD.chain_seq <= a.through_seq)"
)

SQLITE_UP: tuple[str, ...] = (
    "DROP TRIGGER audit_log_no_delete",
    f"""CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    WHEN NOT {_ANCHORED}
    BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}: DELETE refused'); END""",
    """CREATE TRIGGER audit_anchors_no_delete BEFORE DELETE ON audit_anchors
    BEGIN SELECT RAISE(ABORT, 'audit anchors only move forward: DELETE refused'); END""",
    """CREATE TRIGGER audit_anchors_forward BEFORE UPDATE ON audit_anchors
    WHEN NEW.chain <> OLD.chain OR NEW.through_seq <= OLD.through_seq
    BEGIN SELECT RAISE(ABORT, 'audit anchors only move forward: UPDATE refused'); END""",
)
SQLITE_DOWN: tuple[str, ...] = (
    "DROP TRIGGER audit_log_no_delete",
    f"""CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}: DELETE refused'); END""",
)

POSTGRES_UP: tuple[str, ...] = (
    f"""CREATE OR REPLACE FUNCTION audit_log_refuse_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'DELETE' AND {_ANCHORED} THEN
            RETURN OLD;
        END IF;
        RAISE EXCEPTION '{_APPEND_ONLY}: % refused', TG_OP;
    END
    $$""",
    """CREATE FUNCTION audit_anchors_forward() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        IF TG_OP = 'UPDATE' AND NEW.chain = OLD.chain AND NEW.through_seq > OLD.through_seq
        THEN
            RETURN NEW;
        END IF;
        RAISE EXCEPTION 'audit anchors only move forward: % refused', TG_OP;
    END
    $$""",
    """CREATE TRIGGER audit_anchors_forward BEFORE UPDATE OR DELETE ON audit_anchors
    FOR EACH ROW EXECUTE FUNCTION audit_anchors_forward()""",
    """CREATE FUNCTION audit_log_purge_anchored(purged_chain text) RETURNS bigint
    LANGUAGE sql SECURITY DEFINER AS $$
        WITH gone AS (
            DELETE FROM audit_log l USING audit_anchors a
            WHERE l.chain = purged_chain AND a.chain = purged_chain
              AND l.chain_seq <= a.through_seq
            RETURNING 1
        )
        SELECT count(*) FROM gone
    $$""",
)
POSTGRES_DOWN: tuple[str, ...] = (
    "DROP FUNCTION audit_log_purge_anchored(text)",
    "DROP TRIGGER audit_anchors_forward ON audit_anchors",
    "DROP FUNCTION audit_anchors_forward()",
    f"""CREATE OR REPLACE FUNCTION audit_log_refuse_change() RETURNS trigger
    LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '{_APPEND_ONLY}: % refused', TG_OP;
    END
    $$""",
)


def upgrade() -> None:
    op.create_table(
        "request_log",
        sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), nullable=False),
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("occurred_at", UTCDateTime(), nullable=False),
        sa.Column("request_id", sa.String(64), nullable=False),
        sa.Column("method", sa.String(8), nullable=False),
        sa.Column("route", sa.String(200), nullable=False),
        sa.Column("status", sa.SmallInteger(), nullable=False),
        sa.Column("latency_ms", sa.Float(), nullable=False),
        sa.Column("key_id", sa.String(40), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_request_log")),
    )
    op.create_index("ix_request_log_org_id_id", "request_log", ["org_id", "id"])
    op.create_index("ix_request_log_occurred_at", "request_log", ["occurred_at"])
    op.create_table(
        "org_closures",
        sa.Column("org_id", sa.String(40), nullable=False),
        sa.Column("closed_at", UTCDateTime(), nullable=False),
        sa.Column("purge_after", UTCDateTime(), nullable=False),
        sa.Column("purged_at", UTCDateTime(), nullable=True),
        sa.Column("receipt_sha256", sa.String(64), nullable=True),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], name=op.f("fk_org_closures_org_id_orgs")),
        sa.PrimaryKeyConstraint("org_id", name=op.f("pk_org_closures")),
    )
    op.create_table(
        "audit_anchors",
        sa.Column("chain", sa.String(40), nullable=False),
        sa.Column("through_seq", sa.BigInteger(), nullable=False),
        sa.Column("anchor_hash", sa.LargeBinary(32), nullable=False),
        sa.Column("anchor_scheme", sa.SmallInteger(), nullable=False),
        sa.Column("purged_rows", sa.BigInteger(), nullable=False),
        sa.Column("anchored_at", sa.String(32), nullable=False),
        sa.Column("mac", sa.LargeBinary(32), nullable=False),
        sa.Column("signature", sa.LargeBinary(64), nullable=False),
        sa.PrimaryKeyConstraint("chain", name=op.f("pk_audit_anchors")),
    )
    dialect = op.get_bind().dialect.name
    for statement in SQLITE_UP if dialect == "sqlite" else POSTGRES_UP:
        op.execute(statement)


def downgrade() -> None:
    purged = op.get_bind().exec_driver_sql("SELECT COUNT(*) FROM audit_anchors").scalar_one()
    if purged:
        raise RuntimeError(
            f"{purged} audit chains start at a retention anchor; revision 0006 cannot verify "
            "them, so the audit log cannot go below revision 0007"
        )
    dialect = op.get_bind().dialect.name
    for statement in SQLITE_DOWN if dialect == "sqlite" else POSTGRES_DOWN:
        op.execute(statement)
    op.drop_table("audit_anchors")
    op.drop_table("org_closures")
    op.drop_index("ix_request_log_occurred_at", table_name="request_log")
    op.drop_index("ix_request_log_org_id_id", table_name="request_log")
    op.drop_table("request_log")
