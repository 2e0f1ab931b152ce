"""Tables of the metadata store (SQLAlchemy Core). Alembic migrations create them.

Conventions:

* ids are app-generated strings (:func:`app.storage.ids.new_id`), 40 characters at most;
* every tenant-owned row carries ``org_id`` so each query can be scoped to one org;
* timestamps are timezone-aware UTC (:class:`UTCDateTime`) on both databases;
* sealed columns hold :class:`app.crypto` envelope blobs, never plaintext;
* statuses are strings guarded by CHECK constraints (portable, unlike native enums).

The schema must match the migrations exactly; ``tests/app/storage`` compares them.
"""

from __future__ import annotations

from datetime import UTC, datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Dialect

ID = sa.String(40)

# Naming convention: stable constraint names on both databases, so migrations can refer to
# them (and SQLite batch migrations can recreate tables) without guessing generated names.
NAMING_CONVENTION = {
    "ix": "ix_%(column_0_label)s",
    "uq": "uq_%(table_name)s_%(column_0_N_name)s",
    "ck": "ck_%(table_name)s_%(constraint_name)s",
    "fk": "fk_%(table_name)s_%(column_0_name)s_%(referred_table_name)s",
    "pk": "pk_%(table_name)s",
}

metadata = sa.MetaData(naming_convention=NAMING_CONVENTION)


class UTCDateTime(sa.TypeDecorator[datetime]):
    """Aware UTC datetimes in and out, on SQLite (which stores naive text) and PostgreSQL."""

    impl = sa.DateTime(timezone=True)
    cache_ok = True

    def process_bind_param(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        if value.tzinfo is None:
            # A naive datetime is ambiguous (local? UTC?); refuse it instead of guessing.
            raise ValueError("naive datetime; pass an aware UTC datetime")
        value = value.astimezone(UTC)
        return value.replace(tzinfo=None) if dialect.name == "sqlite" else value

    def process_result_value(self, value: datetime | None, dialect: Dialect) -> datetime | None:
        if value is None:
            return None
        return value.replace(tzinfo=UTC) if value.tzinfo is None else value.astimezone(UTC)


def utcnow() -> datetime:
    return datetime.now(UTC)


def _created_at() -> sa.Column[Any]:
    return sa.Column("created_at", UTCDateTime(), nullable=False)


orgs = sa.Table(
    "orgs",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("name", sa.String(200), nullable=False),
    # threshold override, duplicate policy, retention, watchlist_sharing, data_residency:
    # see app.storage.orgs.DEFAULT_ORG_SETTINGS.
    sa.Column("settings", sa.JSON(), nullable=False),
    _created_at(),
)

api_keys = sa.Table(
    "api_keys",
    metadata,
    sa.Column("key_id", ID, primary_key=True),
    sa.Column("org_id", ID, sa.ForeignKey("orgs.id"), nullable=False, index=True),
    # SHA-256 of the secret part only: a stolen database yields no usable key.
    sa.Column("secret_hash", sa.LargeBinary(32), nullable=False),
    sa.Column("scopes", sa.JSON(), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    sa.Column("expires_at", UTCDateTime(), nullable=True),
    sa.Column("revoked_at", UTCDateTime(), nullable=True),
    sa.Column("last_used_at", UTCDateTime(), nullable=True),
    _created_at(),
)

subjects = sa.Table(
    "subjects",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("org_id", ID, sa.ForeignKey("orgs.id"), nullable=False),
    # The client's own identifier; unique only within its org.
    sa.Column("subject_id", sa.String(128), nullable=False),
    sa.Column("nik_sealed", sa.LargeBinary(), nullable=True),
    sa.Column("email_sealed", sa.LargeBinary(), nullable=True),
    sa.Column("phone_sealed", sa.LargeBinary(), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    _created_at(),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    sa.Column("erased_at", UTCDateTime(), nullable=True),
    sa.UniqueConstraint("org_id", "subject_id"),
    sa.CheckConstraint("status IN ('active', 'erased')", name="status"),
)

enrollments = sa.Table(
    "enrollments",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("org_id", ID, sa.ForeignKey("orgs.id"), nullable=False),
    sa.Column("subject_pk", ID, sa.ForeignKey("subjects.id"), nullable=False, index=True),
    # FAISS id (int64) of this vector in the org index; assigned once, never reused.
    sa.Column("vector_id", sa.BigInteger(), nullable=False),
    # Position in the org's change stream; re-assigned on every status change so an index
    # snapshot taken at position P learns of later retirements by replaying seq > P.
    sa.Column("seq", sa.BigInteger(), nullable=False),
    # float32 little-endian, `dimension` values, L2-normalised; NULL once erased.
    sa.Column("vector", sa.LargeBinary(), nullable=True),
    sa.Column("dimension", sa.Integer(), nullable=False),
    sa.Column("model_id", sa.String(128), nullable=False),
    # HMAC-SHA-256 under an org key over vector bytes and identity (app.crypto).
    sa.Column("hashed_ref", sa.LargeBinary(32), nullable=True),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("quality", sa.JSON(), nullable=True),
    _created_at(),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
    # One row per accepted frame; the rows of one capture bundle share `bundle_id`, which the
    # API calls the enrollment id (migration 0002).
    sa.Column("bundle_id", ID, nullable=True),
    sa.Column("frame_index", sa.Integer(), nullable=True),
    sa.Index("ix_enrollments_bundle_id", "org_id", "bundle_id"),
    sa.UniqueConstraint("org_id", "vector_id"),
    sa.UniqueConstraint("org_id", "seq"),
    sa.CheckConstraint("status IN ('active', 'retired', 'erased')", name="status"),
    sa.CheckConstraint("dimension > 0", name="dimension"),
)

frames = sa.Table(
    "frames",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("org_id", ID, sa.ForeignKey("orgs.id"), nullable=False),
    sa.Column("enrollment_id", ID, sa.ForeignKey("enrollments.id"), nullable=False, index=True),
    sa.Column("object_key", sa.String(200), nullable=False, unique=True),
    # The frame's DEK wrapped by the org KEK; deleting it crypto-shreds the frame.
    sa.Column("wrapped_dek", sa.LargeBinary(), nullable=True),
    sa.Column("kek_version", sa.Integer(), nullable=False),
    sa.Column("purge_after", UTCDateTime(), nullable=False, index=True),
    sa.Column("purged_at", UTCDateTime(), nullable=True),
    _created_at(),
)

idempotency_keys = sa.Table(
    "idempotency_keys",
    metadata,
    sa.Column("org_id", ID, sa.ForeignKey("orgs.id"), primary_key=True),
    sa.Column("key", sa.String(255), primary_key=True),
    # SHA-256 of the canonical request: a replay with a different body is a conflict.
    sa.Column("request_hash", sa.LargeBinary(32), nullable=False),
    # NULL while the first request is still in flight.
    sa.Column("response_status", sa.Integer(), nullable=True),
    sa.Column("response_body", sa.LargeBinary(), nullable=True),
    _created_at(),
    # The replica that reserved it (migration 0004; see app.services.idempotency).
    sa.Column("owner", sa.String(64), nullable=True),
    # The subject the answer is about (migration 0006): its erasure deletes the record.
    sa.Column("subject_id", sa.String(128), nullable=True),
    sa.Index("ix_idempotency_keys_org_id_subject_id", "org_id", "subject_id"),
)

# Next enrollment seq per org. A row lock on it (UPDATE ... RETURNING) hands out seqs in
# commit order, which a database SEQUENCE does not: with a sequence, seq 5 may commit after
# seq 6, and an index snapshot taken at 6 would never replay 5.
org_counters = sa.Table(
    "org_counters",
    metadata,
    sa.Column("org_id", ID, sa.ForeignKey("orgs.id"), primary_key=True),
    sa.Column("enrollment_seq", sa.BigInteger(), nullable=False),
)

# Audit log: append-only (triggers), hash-chained per chain; format in app.storage.audit.
audit_log = sa.Table(
    "audit_log",
    metadata,
    sa.Column("id", ID, primary_key=True),
    # The org id, or "_system" for events outside any org.
    sa.Column("chain", sa.String(40), nullable=False),
    sa.Column("chain_seq", sa.BigInteger(), nullable=False),
    sa.Column("org_id", ID, nullable=True),
    # Canonical text form (see audit.py) so the hashed value round-trips byte for byte.
    sa.Column("occurred_at", sa.String(32), nullable=False),
    sa.Column("actor", sa.String(200), nullable=False),
    sa.Column("action", sa.String(64), nullable=False),
    sa.Column("target", sa.String(200), nullable=False),
    sa.Column("details_sealed", sa.LargeBinary(), nullable=False),
    sa.Column("prev_hash", sa.LargeBinary(32), nullable=False),
    sa.Column("hash", sa.LargeBinary(32), nullable=False),
    # How ``hash`` is made (migration 0005): 1 plain SHA-256 (rows written before it),
    # 2 HMAC-SHA-256 under the audit key.
    sa.Column("hash_scheme", sa.SmallInteger(), nullable=False, server_default="1"),
    sa.UniqueConstraint("chain", "chain_seq"),
)

# Head of each audit chain. Appenders lock this row first, which serialises appends to one
# chain on PostgreSQL; SQLite has a single writer anyway.
audit_heads = sa.Table(
    "audit_heads",
    metadata,
    sa.Column("chain", sa.String(40), primary_key=True),
    sa.Column("seq", sa.BigInteger(), nullable=False),
    sa.Column("hash", sa.LargeBinary(32), nullable=False),
    # The audit key's MAC of ``hash`` (migration 0005; NULL while the last row is unkeyed), so
    # the head cannot be pointed at an earlier row without the key.
    sa.Column("mac", sa.LargeBinary(32), nullable=True),
)

# --- shared watchlists (migration 0003) ------------------------------------------------------

watchlists = sa.Table(
    "watchlists",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("owner_org_id", ID, sa.ForeignKey("orgs.id"), nullable=False),
    sa.Column("name", sa.String(200), nullable=False),
    # Where the watchlist's data lives; an org whose residency forbids it cannot join.
    sa.Column("region", sa.String(32), nullable=False),
    # Pinned model pack: entries of another model never share its index.
    sa.Column("model_id", sa.String(128), nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    # Last vector id handed out in this watchlist's own index namespace.
    sa.Column("entry_seq", sa.BigInteger(), nullable=False),
    _created_at(),
    sa.Column("closed_at", UTCDateTime(), nullable=True),
    # Position of the watchlist's index namespace (migration 0004, see app.storage.feed).
    sa.Column("change_seq", sa.BigInteger(), nullable=False, server_default="0"),
    sa.CheckConstraint("status IN ('open', 'closed')", name="status"),
)

watchlist_members = sa.Table(
    "watchlist_members",
    metadata,
    sa.Column("watchlist_id", ID, sa.ForeignKey("watchlists.id"), primary_key=True),
    sa.Column("org_id", ID, sa.ForeignKey("orgs.id"), primary_key=True, index=True),
    # invited -> active (the member opted in) -> left | removed; only `active` counts.
    sa.Column("state", sa.String(16), nullable=False),
    sa.Column("invited_at", UTCDateTime(), nullable=True),
    sa.Column("joined_at", UTCDateTime(), nullable=True),
    sa.Column("left_at", UTCDateTime(), nullable=True),
    sa.CheckConstraint("state IN ('invited', 'active', 'left', 'removed')", name="state"),
)

watchlist_entries = sa.Table(
    "watchlist_entries",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("watchlist_id", ID, sa.ForeignKey("watchlists.id"), nullable=False),
    sa.Column("contributor_org_id", ID, sa.ForeignKey("orgs.id"), nullable=False),
    sa.Column("vector_id", sa.BigInteger(), nullable=False),
    # float32 little-endian, L2-normalised; NULL once withdrawn.
    sa.Column("vector", sa.LargeBinary(), nullable=True),
    sa.Column("dimension", sa.Integer(), nullable=False),
    sa.Column("model_id", sa.String(128), nullable=False),
    # HMAC-SHA-256 under the contributor's reference key.
    sa.Column("hashed_ref", sa.LargeBinary(32), nullable=True),
    sa.Column("reason_code", sa.String(64), nullable=False),
    sa.Column("source", sa.String(16), nullable=False),  # "enrollment" or "capture"
    # The contributor's embedding it was copied from; never shown to other orgs.
    sa.Column("source_embedding_id", ID, nullable=True, index=True),
    sa.Column("status", sa.String(16), nullable=False),
    _created_at(),
    sa.Column("withdrawn_at", UTCDateTime(), nullable=True),
    sa.UniqueConstraint("watchlist_id", "vector_id"),
    sa.CheckConstraint("status IN ('active', 'withdrawn')", name="status"),
)


# --- what replicas share (migration 0004) -----------------------------------------------------

# The key manager's bookkeeping, one JSON document per keyring (app.crypto.kms).
keyring_state = sa.Table(
    "keyring_state",
    metadata,
    sa.Column("name", sa.String(64), primary_key=True),
    sa.Column("state", sa.Text(), nullable=False),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

# Sealed frame payloads when the database is the object store (app.storage.objects).
sealed_objects = sa.Table(
    "sealed_objects",
    metadata,
    sa.Column("key", sa.String(200), primary_key=True),
    sa.Column("data", sa.LargeBinary(), nullable=False),
    sa.Column("created_at", UTCDateTime(), nullable=False, index=True),
)


# --- erasure that holds (migration 0006; app.services.rights) ---------------------------------

# One data key per subject, wrapped under the org's subject-key KEK; erasure deletes the row.
subject_keys = sa.Table(
    "subject_keys",
    metadata,
    sa.Column("org_id", ID, sa.ForeignKey("orgs.id"), primary_key=True),
    sa.Column("subject_id", sa.String(128), primary_key=True),
    sa.Column("wrapped_key", sa.LargeBinary(), nullable=False),
    sa.Column("kek_version", sa.Integer(), nullable=False),
    _created_at(),
)

# Every erasure (no PII): `wajah restore` erases again what an older backup still holds.
erasure_log = sa.Table(
    "erasure_log",
    metadata,
    sa.Column("org_id", ID, primary_key=True),
    sa.Column("subject_id", sa.String(128), primary_key=True),
    sa.Column("erased_at", UTCDateTime(), nullable=False),
    sa.Column("receipt_sha256", sa.String(64), nullable=False),
    sa.Column("shredded_at", UTCDateTime(), nullable=True),
)


# --- retention and org closure (migration 0007; app.services.retention) ----------------------

# One row per authenticated API request: what the org may list and nothing it did not send
# in the clear (the route template, never the path: no subject id, no query, no body).
request_log = sa.Table(
    "request_log",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("org_id", ID, nullable=False),
    sa.Column("occurred_at", UTCDateTime(), nullable=False),
    sa.Column("request_id", sa.String(64), nullable=False),
    sa.Column("method", sa.String(8), nullable=False),
    sa.Column("route", sa.String(200), nullable=False),
    sa.Column("status", sa.SmallInteger(), nullable=False),
    sa.Column("latency_ms", sa.Float(), nullable=False),
    sa.Column("key_id", ID, nullable=False),
    sa.Index("ix_request_log_org_id_id", "org_id", "id"),
    sa.Index("ix_request_log_occurred_at", "occurred_at"),
)

# A closed org: keys revoked at `closed_at`, data purged and keys destroyed after
# `purge_after`.
org_closures = sa.Table(
    "org_closures",
    metadata,
    sa.Column("org_id", ID, sa.ForeignKey("orgs.id"), primary_key=True),
    sa.Column("closed_at", UTCDateTime(), nullable=False),
    sa.Column("purge_after", UTCDateTime(), nullable=False),
    sa.Column("purged_at", UTCDateTime(), nullable=True),
    sa.Column("receipt_sha256", sa.String(64), nullable=True),
)

# Where an audit chain starts once retention purged its oldest rows (app.storage.audit).
audit_anchors = sa.Table(
    "audit_anchors",
    metadata,
    sa.Column("chain", sa.String(40), primary_key=True),
    sa.Column("through_seq", sa.BigInteger(), nullable=False),
    sa.Column("anchor_hash", sa.LargeBinary(32), nullable=False),
    sa.Column("anchor_scheme", sa.SmallInteger(), nullable=False),
    sa.Column("purged_rows", sa.BigInteger(), nullable=False),
    sa.Column("anchored_at", sa.String(32), nullable=False),
    sa.Column("mac", sa.LargeBinary(32), nullable=False),
    sa.Column("signature", sa.LargeBinary(64), nullable=False),
)


# --- the key lifecycle (migration 0008; app.services.keys, app.storage.wrapped) ----------------

# Audit details' DEKs rewrapped under a newer org KEK version. An audit row never changes
# (append-only, and its hash covers the sealed details byte for byte), so the rewrapped DEK
# lives here and is read in place of the blob's own, which dies with its KEK version.
audit_detail_keys = sa.Table(
    "audit_detail_keys",
    metadata,
    sa.Column("audit_id", ID, primary_key=True),
    sa.Column("chain", sa.String(40), nullable=False, index=True),
    sa.Column("wrapped_dek", sa.LargeBinary(), nullable=False),
    sa.Column("kek_version", sa.Integer(), nullable=False),
    sa.Column("rewrapped_at", UTCDateTime(), nullable=False),
)


# --- webhooks (migration 0009; app.services.webhooks, app.storage.webhooks) -------------------

# An org's webhook endpoint. The signing secret is sealed under the org KEK (never stored or
# logged in the clear); during a rotation the previous secret signs too, until it expires.
webhook_endpoints = sa.Table(
    "webhook_endpoints",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("org_id", ID, sa.ForeignKey("orgs.id"), nullable=False, index=True),
    sa.Column("url", sa.Text(), nullable=False),
    sa.Column("events", sa.JSON(), nullable=False),
    sa.Column("description", sa.String(500), nullable=True),
    sa.Column("secret_sealed", sa.LargeBinary(), nullable=False),
    sa.Column("previous_secret_sealed", sa.LargeBinary(), nullable=True),
    sa.Column("previous_secret_expires_at", UTCDateTime(), nullable=True),
    sa.Column("enabled", sa.Boolean(), nullable=False),
    sa.Column("disabled_at", UTCDateTime(), nullable=True),
    sa.Column("disabled_reason", sa.String(200), nullable=True),
    sa.Column("failing_since", UTCDateTime(), nullable=True),
    _created_at(),
    sa.Column("updated_at", UTCDateTime(), nullable=False),
)

# The transactional outbox: one row per event, written in the transaction of the change.
webhook_events = sa.Table(
    "webhook_events",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("org_id", ID, nullable=False),
    sa.Column("type", sa.String(64), nullable=False),
    sa.Column("occurred_at", UTCDateTime(), nullable=False),
    sa.Column("payload", sa.Text(), nullable=False),
    sa.Index("ix_webhook_events_org_id_occurred_at", "org_id", "occurred_at"),
)

# One delivery per (event, subscribed endpoint), fanned out in the same transaction. The
# worker claims due rows (FOR UPDATE SKIP LOCKED on PostgreSQL) and retries with backoff.
webhook_deliveries = sa.Table(
    "webhook_deliveries",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("org_id", ID, nullable=False),
    sa.Column("endpoint_id", ID, nullable=False),
    sa.Column("event_id", ID, nullable=False),
    sa.Column("status", sa.String(16), nullable=False),
    sa.Column("attempts", sa.Integer(), nullable=False),
    sa.Column("next_attempt_at", UTCDateTime(), nullable=True),
    sa.Column("last_attempt_at", UTCDateTime(), nullable=True),
    sa.Column("completed_at", UTCDateTime(), nullable=True),
    _created_at(),
    sa.CheckConstraint("status IN ('pending', 'succeeded', 'failed')", name="status"),
    sa.Index("ix_webhook_deliveries_status_next_attempt_at", "status", "next_attempt_at"),
    sa.Index("ix_webhook_deliveries_org_id_endpoint_id", "org_id", "endpoint_id"),
    sa.Index("ix_webhook_deliveries_event_id", "event_id"),
)

# Every delivery attempt: the 30-day history (retention class `webhook_deliveries`).
webhook_attempts = sa.Table(
    "webhook_attempts",
    metadata,
    sa.Column("id", sa.BigInteger().with_variant(sa.Integer(), "sqlite"), primary_key=True),
    sa.Column("org_id", ID, nullable=False),
    sa.Column("delivery_id", ID, nullable=False),
    sa.Column("endpoint_id", ID, nullable=False),
    sa.Column("event_id", ID, nullable=False),
    sa.Column("attempted_at", UTCDateTime(), nullable=False),
    sa.Column("status_code", sa.SmallInteger(), nullable=True),
    sa.Column("latency_ms", sa.Float(), nullable=False),
    sa.Column("error_class", sa.String(64), nullable=True),
    sa.Index("ix_webhook_attempts_org_id_endpoint_id_id", "org_id", "endpoint_id", "id"),
    sa.Index("ix_webhook_attempts_delivery_id", "delivery_id"),
    sa.Index("ix_webhook_attempts_attempted_at", "attempted_at"),
)


# --- onboarding: source documents (migration 0010; app.services.onboarding) -----------------

# An ID-document image given to POST /v1/compare, sealed like a frame, never served; erased
# with its subject and swept after the org's `retention.source_documents_days` (90).
source_documents = sa.Table(
    "source_documents",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("org_id", ID, sa.ForeignKey("orgs.id"), nullable=False),
    sa.Column("subject_id", sa.String(128), nullable=True),
    sa.Column("object_key", sa.String(200), nullable=False, unique=True),
    # The document's DEK wrapped by the org KEK, as a frame's; the payload is in the object
    # store. Tied to an enrolled subject, the payload key also mixes in the subject's key.
    sa.Column("wrapped_dek", sa.LargeBinary(), nullable=False),
    sa.Column("kek_version", sa.Integer(), nullable=False),
    sa.Column("media_type", sa.String(32), nullable=False),
    sa.Column("byte_size", sa.Integer(), nullable=False),
    _created_at(),
    sa.Index("ix_source_documents_org_id_subject_id", "org_id", "subject_id"),
    sa.Index("ix_source_documents_created_at", "created_at"),
)


# --- onboarding: active liveness challenges (migration 0011; app.services.liveness) ---------

# A single-use nonce (stored only as its SHA-256) and the head movements it asks for.
liveness_challenges = sa.Table(
    "liveness_challenges",
    metadata,
    sa.Column("id", ID, primary_key=True),
    sa.Column("org_id", ID, sa.ForeignKey("orgs.id"), nullable=False),
    sa.Column("nonce_sha256", sa.String(64), nullable=False, unique=True),
    sa.Column("sequence", sa.JSON(), nullable=False),
    _created_at(),
    sa.Column("expires_at", UTCDateTime(), nullable=False, index=True),
    sa.Column("used_at", UTCDateTime(), nullable=True),
)
