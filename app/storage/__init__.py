"""The system of record: SQLAlchemy Core + Alembic, one module per aggregate.

* `orgs` — organisations, their settings and API keys;
* `subjects` — subjects, their enrollments and the enrollment change stream;
* `frames` — sealed-frame rows (wrapped DEKs, retention);
* `watchlists` — shared watchlists, memberships and entries;
* `idempotency` — `Idempotency-Key` records;
* `audit` — the append-only, hash-chained audit log;
* `feed` — positions of the index namespaces, change notifications, advisory locks;
* `objects` — the sealed-object store (frame payloads).

Typical write path (one transaction: the change and its audit row commit together)::

    with engine.begin() as conn:
        ref = subjects.insert_enrollment(conn, org_id=..., subject_pk=..., vector=..., ...)
        audit.append(conn, sealer=cipher, chain_key=audit_key, org_id=..., actor=key_id,
                     action="enrollment.create", target=ref.id, details={...})

Services open transactions with `read_transaction(engine)` / `write_transaction(engine)` and
hold the `Connection` only to hand it back to these functions: no SQL outside here.
"""

from sqlalchemy.engine import Connection, Engine

from app.storage import audit, feed, frames, idempotency, orgs, subjects, watchlists
from app.storage.audit import AuditEntry, AuditPage, AuditRecord, DetailSealer, VerifyResult
from app.storage.engine import (
    DatabaseClaim,
    DatabaseInUseError,
    claim_database,
    create_engine_for,
    ping,
    read_only,
    read_transaction,
    write_transaction,
)
from app.storage.ids import new_id
from app.storage.migrate import current_revision, downgrade_database, upgrade_database
from app.storage.objects import (
    InvalidObjectKeyError,
    LocalObjectStore,
    ObjectNotFoundError,
    ObjectStore,
    ObjectStoreError,
)
from app.storage.schema import utcnow
from app.storage.subjects import EnrollmentChange, EnrollmentRef

__all__ = [
    "AuditEntry",
    "AuditPage",
    "AuditRecord",
    "Connection",
    "DatabaseClaim",
    "DatabaseInUseError",
    "DetailSealer",
    "Engine",
    "EnrollmentChange",
    "EnrollmentRef",
    "InvalidObjectKeyError",
    "LocalObjectStore",
    "ObjectNotFoundError",
    "ObjectStore",
    "ObjectStoreError",
    "VerifyResult",
    "audit",
    "claim_database",
    "create_engine_for",
    "current_revision",
    "downgrade_database",
    "feed",
    "frames",
    "idempotency",
    "new_id",
    "orgs",
    "ping",
    "read_only",
    "read_transaction",
    "subjects",
    "upgrade_database",
    "utcnow",
    "watchlists",
    "write_transaction",
]
