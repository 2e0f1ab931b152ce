"""Metadata store (SQLAlchemy Core + Alembic), append-only audit log, sealed-object store.

Typical write path (one transaction: the change and its audit row commit together)::

    with engine.begin() as conn:
        ref = repo.insert_enrollment(conn, org_id=..., subject_pk=..., vector=..., ...)
        audit.append(conn, sealer=cipher, org_id=..., actor=key_id,
                     action="enrollment.create", target=ref.id, details={...})
"""

from app.storage import audit, repo
from app.storage.audit import AuditEntry, AuditPage, AuditRecord, DetailSealer, VerifyResult
from app.storage.engine import create_engine_for, read_only
from app.storage.ids import new_id
from app.storage.migrate import current_revision, downgrade_database, upgrade_database
from app.storage.objects import (
    InvalidObjectKeyError,
    LocalObjectStore,
    ObjectNotFoundError,
    ObjectStore,
    ObjectStoreError,
)
from app.storage.repo import EnrollmentChange, EnrollmentRef

__all__ = [
    "AuditEntry",
    "AuditPage",
    "AuditRecord",
    "DetailSealer",
    "EnrollmentChange",
    "EnrollmentRef",
    "InvalidObjectKeyError",
    "LocalObjectStore",
    "ObjectNotFoundError",
    "ObjectStore",
    "ObjectStoreError",
    "VerifyResult",
    "audit",
    "create_engine_for",
    "current_revision",
    "downgrade_database",
    "new_id",
    "read_only",
    "repo",
    "upgrade_database",
]
