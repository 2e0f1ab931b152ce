"""Initial schema: orgs, keys, subjects, enrollments, frames, idempotency, audit log.

Revision ID: 0001
Revises:
Create Date: 2026-11-27

The audit log is made append-only here, by the database itself, so that no code path (ours
or a console session with the app's credentials) can quietly rewrite history:

* SQLite: BEFORE UPDATE / BEFORE DELETE triggers ``RAISE(ABORT)``. ``INSERT OR REPLACE``
  deletes the conflicting row *without* firing DELETE triggers unless recursive_triggers is
  on, so a BEFORE INSERT trigger also refuses any insert that collides with an existing id
  or (chain, chain_seq).
* PostgreSQL: a row trigger refuses UPDATE and DELETE (``INSERT ... ON CONFLICT DO UPDATE``
  fires it too), a statement trigger refuses TRUNCATE (row triggers do not see TRUNCATE), and
  UPDATE/DELETE/TRUNCATE are revoked from PUBLIC. ``app.storage.roles.restrict_app_role``
  revokes them from a dedicated app role as well.
"""

from __future__ import annotations

import sqlalchemy as sa
from alembic import op

from app.storage.schema import UTCDateTime

revision = "0001"
down_revision = None
branch_labels = None
depends_on = None

_APPEND_ONLY = "audit_log is append-only"

SQLITE_AUDIT_TRIGGERS: tuple[str, ...] = (
    f"""CREATE TRIGGER audit_log_no_update BEFORE UPDATE ON audit_log
    BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}: UPDATE refused'); END""",
    f"""CREATE TRIGGER audit_log_no_delete BEFORE DELETE ON audit_log
    BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}: DELETE refused'); END""",
    f"""CREATE TRIGGER audit_log_no_replace BEFORE INSERT ON audit_log
    WHEN EXISTS (SELECT 1 FROM audit_log
                 WHERE id = NEW.id OR (chain = NEW.chain AND chain_seq = NEW.chain_seq))
    BEGIN SELECT RAISE(ABORT, '{_APPEND_ONLY}: row exists, REPLACE refused'); END""",
)

POSTGRES_AUDIT_TRIGGERS: tuple[str, ...] = (
    f"""CREATE FUNCTION audit_log_refuse_change() RETURNS trigger LANGUAGE plpgsql AS $$
    BEGIN
        RAISE EXCEPTION '{_APPEND_ONLY}: % refused', TG_OP;
    END
    $$""",
    """CREATE TRIGGER audit_log_no_update_delete BEFORE UPDATE OR DELETE ON audit_log
    FOR EACH ROW EXECUTE FUNCTION audit_log_refuse_change()""",
    """CREATE TRIGGER audit_log_no_truncate BEFORE TRUNCATE ON audit_log
    FOR EACH STATEMENT EXECUTE FUNCTION audit_log_refuse_change()""",
    "REVOKE UPDATE, DELETE, TRUNCATE ON audit_log FROM PUBLIC",
)


def _id(name: str = "id") -> sa.Column[str]:
    return sa.Column(name, sa.String(length=40), nullable=False)


def _ts(name: str, *, nullable: bool) -> sa.Column[object]:
    return sa.Column(name, UTCDateTime(), nullable=nullable)


def upgrade() -> None:
    op.create_table(
        "orgs",
        _id(),
        sa.Column("name", sa.String(length=200), nullable=False),
        sa.Column("settings", sa.JSON(), nullable=False),
        _ts("created_at", nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_orgs")),
    )
    op.create_table(
        "api_keys",
        _id("key_id"),
        _id("org_id"),
        sa.Column("secret_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("scopes", sa.JSON(), nullable=False),
        sa.Column("name", sa.String(length=200), nullable=False),
        _ts("expires_at", nullable=True),
        _ts("revoked_at", nullable=True),
        _ts("last_used_at", nullable=True),
        _ts("created_at", nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], name=op.f("fk_api_keys_org_id_orgs")),
        sa.PrimaryKeyConstraint("key_id", name=op.f("pk_api_keys")),
    )
    op.create_index(op.f("ix_api_keys_org_id"), "api_keys", ["org_id"])
    op.create_table(
        "subjects",
        _id(),
        _id("org_id"),
        sa.Column("subject_id", sa.String(length=128), nullable=False),
        sa.Column("nik_sealed", sa.LargeBinary(), nullable=True),
        sa.Column("email_sealed", sa.LargeBinary(), nullable=True),
        sa.Column("phone_sealed", sa.LargeBinary(), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        _ts("created_at", nullable=False),
        _ts("updated_at", nullable=False),
        _ts("erased_at", nullable=True),
        sa.CheckConstraint("status IN ('active', 'erased')", name=op.f("ck_subjects_status")),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], name=op.f("fk_subjects_org_id_orgs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_subjects")),
        sa.UniqueConstraint("org_id", "subject_id", name=op.f("uq_subjects_org_id_subject_id")),
    )
    op.create_table(
        "enrollments",
        _id(),
        _id("org_id"),
        _id("subject_pk"),
        sa.Column("vector_id", sa.BigInteger(), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("vector", sa.LargeBinary(), nullable=True),
        sa.Column("dimension", sa.Integer(), nullable=False),
        sa.Column("model_id", sa.String(length=128), nullable=False),
        sa.Column("hashed_ref", sa.LargeBinary(length=32), nullable=True),
        sa.Column("status", sa.String(length=16), nullable=False),
        sa.Column("quality", sa.JSON(), nullable=True),
        _ts("created_at", nullable=False),
        _ts("updated_at", nullable=False),
        sa.CheckConstraint(
            "status IN ('active', 'retired', 'erased')", name=op.f("ck_enrollments_status")
        ),
        sa.CheckConstraint("dimension > 0", name=op.f("ck_enrollments_dimension")),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], name=op.f("fk_enrollments_org_id_orgs")),
        sa.ForeignKeyConstraint(
            ["subject_pk"], ["subjects.id"], name=op.f("fk_enrollments_subject_pk_subjects")
        ),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_enrollments")),
        sa.UniqueConstraint("org_id", "seq", name=op.f("uq_enrollments_org_id_seq")),
        sa.UniqueConstraint("org_id", "vector_id", name=op.f("uq_enrollments_org_id_vector_id")),
    )
    op.create_index(op.f("ix_enrollments_subject_pk"), "enrollments", ["subject_pk"])
    op.create_table(
        "frames",
        _id(),
        _id("org_id"),
        _id("enrollment_id"),
        sa.Column("object_key", sa.String(length=200), nullable=False),
        sa.Column("wrapped_dek", sa.LargeBinary(), nullable=True),
        sa.Column("kek_version", sa.Integer(), nullable=False),
        _ts("purge_after", nullable=False),
        _ts("purged_at", nullable=True),
        _ts("created_at", nullable=False),
        sa.ForeignKeyConstraint(
            ["enrollment_id"], ["enrollments.id"], name=op.f("fk_frames_enrollment_id_enrollments")
        ),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], name=op.f("fk_frames_org_id_orgs")),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_frames")),
        sa.UniqueConstraint("object_key", name=op.f("uq_frames_object_key")),
    )
    op.create_index(op.f("ix_frames_enrollment_id"), "frames", ["enrollment_id"])
    op.create_index(op.f("ix_frames_purge_after"), "frames", ["purge_after"])
    op.create_table(
        "idempotency_keys",
        _id("org_id"),
        sa.Column("key", sa.String(length=255), nullable=False),
        sa.Column("request_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("response_status", sa.Integer(), nullable=True),
        sa.Column("response_body", sa.LargeBinary(), nullable=True),
        _ts("created_at", nullable=False),
        sa.ForeignKeyConstraint(
            ["org_id"], ["orgs.id"], name=op.f("fk_idempotency_keys_org_id_orgs")
        ),
        sa.PrimaryKeyConstraint("org_id", "key", name=op.f("pk_idempotency_keys")),
    )
    op.create_table(
        "org_counters",
        _id("org_id"),
        sa.Column("enrollment_seq", sa.BigInteger(), nullable=False),
        sa.ForeignKeyConstraint(["org_id"], ["orgs.id"], name=op.f("fk_org_counters_org_id_orgs")),
        sa.PrimaryKeyConstraint("org_id", name=op.f("pk_org_counters")),
    )
    op.create_table(
        "audit_log",
        _id(),
        sa.Column("chain", sa.String(length=40), nullable=False),
        sa.Column("chain_seq", sa.BigInteger(), nullable=False),
        sa.Column("org_id", sa.String(length=40), nullable=True),
        sa.Column("occurred_at", sa.String(length=32), nullable=False),
        sa.Column("actor", sa.String(length=200), nullable=False),
        sa.Column("action", sa.String(length=64), nullable=False),
        sa.Column("target", sa.String(length=200), nullable=False),
        sa.Column("details_sealed", sa.LargeBinary(), nullable=False),
        sa.Column("prev_hash", sa.LargeBinary(length=32), nullable=False),
        sa.Column("hash", sa.LargeBinary(length=32), nullable=False),
        sa.PrimaryKeyConstraint("id", name=op.f("pk_audit_log")),
        sa.UniqueConstraint("chain", "chain_seq", name=op.f("uq_audit_log_chain_chain_seq")),
    )
    op.create_table(
        "audit_heads",
        sa.Column("chain", sa.String(length=40), nullable=False),
        sa.Column("seq", sa.BigInteger(), nullable=False),
        sa.Column("hash", sa.LargeBinary(length=32), nullable=False),
        sa.PrimaryKeyConstraint("chain", name=op.f("pk_audit_heads")),
    )

    dialect = op.get_bind().dialect.name
    if dialect == "sqlite":
        statements = SQLITE_AUDIT_TRIGGERS
    elif dialect == "postgresql":
        statements = POSTGRES_AUDIT_TRIGGERS
    else:  # pragma: no cover - create_engine_for refuses other backends
        raise RuntimeError(f"no append-only triggers for {dialect}")
    for statement in statements:
        op.execute(statement)


def downgrade() -> None:
    # Dropping the tables drops their triggers; the PostgreSQL function outlives them.
    for table in (
        "audit_heads",
        "audit_log",
        "org_counters",
        "idempotency_keys",
        "frames",
        "enrollments",
        "subjects",
        "api_keys",
        "orgs",
    ):
        op.drop_table(table)
    if op.get_bind().dialect.name == "postgresql":
        op.execute("DROP FUNCTION audit_log_refuse_change()")
