"""Data-subject rights (UU PDP): access and portability (`export_subject`), rectification
(`rectify_subject`), and the parts of erasure that outlive the request: the shred that makes
backup copies unreadable (`shred_erasures`) and the re-application of logged erasures after
a restore (`reapply_erasures`). The erasure itself is `app.services.subjects.erase_subject`.

Why erasure holds against backups
    A subject's PII is sealed under its own subject key, and each of its frames under a key
    derived from the frame's DEK *and* that subject key (`app.crypto.subject_keys`). Erasure
    deletes the subject key from the database at once. A backup taken before still holds it,
    wrapped under a version of the org's subject-key KEK; `shred_erasures` (every retention
    round, hourly, on one replica) rotates that KEK, rewraps every live subject key under the
    new version and destroys all older versions, after which no copy of the erased subject's
    key opens through the key manager. A restore keeps the newer keyring and subject keys
    (`app.backup`), so restoring a backup loses nothing that was not erased. What still opens
    an old backup is an old copy of the keyring *with* the root key it was wrapped under:
    `wajah keys rotate-root` rewraps the keyring under a new root key, and once the old root
    key is destroyed those copies open nothing (README, "Data-subject rights").
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Mapping
from typing import Any

import numpy as np

from app.crypto import DecryptionError, Purpose, Scope
from app.errors import (
    ForbiddenError,
    InvalidPiiError,
    SubjectErasedError,
    SubjectNotFoundError,
)
from app.runtime import Runtime
from app.services import idempotency, indexing, sealing
from app.services.principal import Principal, record
from app.services.subjects import PII_FIELDS, SUBJECT_ID, check_pii, erase_rows
from app.storage import (
    Connection,
    documents,
    feed,
    read_transaction,
    rights,
    subjects,
    utcnow,
    wrapped,
    write_transaction,
)
from app.storage.webhooks import record_event

EXPORT_FORMAT = "wajah-subject-export/1"
FRAMES_STATEMENT = (
    "Capture frames are never exported: they are sealed at rest, only the service itself may "
    "open them (to re-embed them on a model upgrade), and no endpoint returns frame bytes, "
    "crops or thumbnails. They are purged at the end of the org's frame retention, or at once "
    "on erasure."
)
SHRED_BATCH = 500


def canonical_sha256(document: Mapping[str, Any], *, leave_out: tuple[str, ...]) -> str:
    """SHA-256 (hex) of the canonical JSON of `document` without the keys `leave_out`:
    UTF-8 of ``json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True)``."""
    body = {k: v for k, v in document.items() if k not in leave_out}
    return hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode()
    ).hexdigest()


def _iso(moment: Any) -> str | None:
    return None if moment is None else moment.isoformat()


# --- access and portability ---------------------------------------------------------------------


def export_subject(
    runtime: Runtime, principal: Principal, subject_id: str, include_vectors: bool = False
) -> dict[str, Any]:
    """Everything the org holds about one subject, as one JSON document with its SHA-256
    (over the canonical JSON of the document without ``sha256`` and ``audit_id``).

    An erased subject's export is what is left: its ids, times, the erasure and the audit
    events (no PII, no vectors). Vectors only with `include_vectors`, which needs the
    `admin` scope and writes an audit row of its own. The export itself is audited.
    """
    if include_vectors and not principal.can(Scope.ADMIN):
        raise ForbiddenError("include_vectors needs a key with the `admin` scope")
    org_id = principal.org_id
    if not SUBJECT_ID.fullmatch(subject_id):
        raise SubjectNotFoundError(f"no subject {subject_id!r}")
    with read_transaction(runtime.engine) as conn:
        row = subjects.find_subject(conn, org_id, subject_id)
        if row is None:
            raise SubjectNotFoundError(f"no subject {subject_id!r}")
        document = _export_document(conn, runtime, row, include_vectors)
    document["sha256"] = canonical_sha256(document, leave_out=("sha256", "audit_id"))
    with write_transaction(runtime.engine) as conn:
        summary = {
            "sha256": document["sha256"],
            "enrollments": len(document["enrollments"]),
            "audit_events": len(document["audit_events"]),
            "include_vectors": include_vectors,
        }
        audit_id = record(
            conn,
            runtime,
            principal,
            org_id=org_id,
            action="subject.export",
            target=subject_id,
            details=summary,
        )
        event = {"subject_id": subject_id, "export_sha256": document["sha256"]}
        record_event(conn, org_id, "subject.exported", event)
        if include_vectors:
            vectors = sum(len(e["embeddings"]) for e in document["enrollments"])
            record(
                conn,
                runtime,
                principal,
                org_id=org_id,
                action="subject.export.vectors",
                target=subject_id,
                details={"sha256": document["sha256"], "vectors": vectors},
            )
    return {**document, "audit_id": audit_id}


def _export_document(
    conn: Connection, runtime: Runtime, row: Any, include_vectors: bool
) -> dict[str, Any]:
    org_id, subject_id = row.org_id, row.subject_id
    embeddings = subjects.subject_enrollments(conn, org_id, row.id)
    key = sealing.subject_key_in(conn, runtime, org_id, subject_id)
    erasure = rights.erasure_of(conn, org_id, subject_id)
    entries = rights.entries_copied_from(conn, org_id, [e.id for e in embeddings])
    bundles = {e.bundle_id or e.id for e in embeddings}
    targets = {subject_id, *bundles, *(e.id for e in embeddings), *(w.id for w in entries)}
    events = rights.audit_rows_about(conn, org_id, targets)
    rewrapped = wrapped.detail_keys_of(conn, [e.id for e in events])  # by a key rotation
    return {
        "format": EXPORT_FORMAT,
        "exported_at": utcnow().isoformat(),
        "org_id": org_id,
        "subject_id": subject_id,
        "status": row.status,
        "created_at": _iso(row.created_at),
        "updated_at": _iso(row.updated_at),
        "erased_at": _iso(row.erased_at),
        "erasure": None
        if erasure is None
        else {"erased_at": _iso(erasure.erased_at), "receipt_sha256": erasure.receipt_sha256},
        "pii": sealing.open_pii(runtime, row, key),
        "enrollments": _export_enrollments(embeddings, include_vectors),
        "watchlist_entries": [
            {
                "entry_id": w.id,
                "watchlist_id": w.watchlist_id,
                "watchlist_name": w.watchlist_name,
                "reason_code": w.reason_code,
                "embedding_id": w.source_embedding_id,
                "status": w.status,
                "created_at": _iso(w.created_at),
                "withdrawn_at": _iso(w.withdrawn_at),
            }
            for w in entries
        ],
        "audit_events": [_export_event(runtime, org_id, e, rewrapped) for e in events],
        "frames": {"exported": False, "statement": FRAMES_STATEMENT},
        "source_documents": [
            {
                "document_id": d.id,
                "media_type": d.media_type,
                "byte_size": d.byte_size,
                "created_at": _iso(d.created_at),
            }
            for d in documents.documents_of_subject(conn, org_id, subject_id)
        ],
        "vectors_included": include_vectors,
    }


def _export_enrollments(rows: list[Any], include_vectors: bool) -> list[dict[str, Any]]:
    bundles: dict[str, dict[str, Any]] = {}
    for e in rows:
        bundle = bundles.setdefault(
            e.bundle_id or e.id,
            {
                "enrollment_id": e.bundle_id or e.id,
                "model_id": e.model_id,
                "created_at": _iso(e.created_at),
                "embeddings": [],
            },
        )
        item = {
            "embedding_id": e.id,
            "frame_index": e.frame_index,
            "status": e.status,
            "model_id": e.model_id,
            "quality": e.quality,
            "hashed_reference": bytes(e.hashed_ref).hex() if e.hashed_ref else None,
            "created_at": _iso(e.created_at),
            "updated_at": _iso(e.updated_at),
        }
        if include_vectors:
            item["vector"] = (
                None
                if e.vector is None
                else [float(x) for x in np.frombuffer(bytes(e.vector), dtype="<f4")]
            )
        bundle["embeddings"].append(item)
    return list(bundles.values())


def _export_event(
    runtime: Runtime, org_id: str, row: Any, rewrapped: Mapping[str, bytes]
) -> dict[str, Any]:
    details = json.loads(
        runtime.cipher.open(
            bytes(row.details_sealed),
            org_id=org_id,
            object_id=row.id,
            purpose=Purpose.AUDIT_DETAIL,
            wrapped_dek=rewrapped.get(row.id),
        )
    )
    return {
        "id": row.id,
        "seq": int(row.chain_seq),
        "occurred_at": row.occurred_at,
        "actor": row.actor,
        "action": row.action,
        "target": row.target,
        "details": details,
    }


# --- rectification ------------------------------------------------------------------------------


def rectify_subject(
    runtime: Runtime,
    principal: Principal,
    subject_id: str,
    changes: Mapping[str, str | None],
    idempotency_key: str | None = None,
) -> dict[str, Any]:
    """Set, change or clear (None) PII fields, validated as at enroll; every field the
    subject keeps is resealed under its subject key. Audited with the field names only.

    The answer names what happened to each field, never a value: it is what an
    `Idempotency-Key` stores, and PII must not sit unsealed in the database.
    """
    org_id = principal.org_id
    if not changes:
        raise InvalidPiiError("send at least one PII field to set, change or clear (null)")
    clean = check_pii(changes)
    cleared = sorted(name for name, value in changes.items() if value is None)
    if not SUBJECT_ID.fullmatch(subject_id):
        raise SubjectNotFoundError(f"no subject {subject_id!r}")
    with read_transaction(runtime.engine) as conn:
        _live_subject(conn, org_id, subject_id, lock=False)
    # Before the transaction: a subject enrolled before subject keys existed gets one now.
    key = sealing.ensure_subject_key(runtime, org_id, subject_id)
    with write_transaction(runtime.engine) as conn:
        row = _live_subject(conn, org_id, subject_id, lock=True)
        kept = {
            name: value
            for name, value in sealing.open_pii(runtime, row, key).items()
            if value is not None and name not in changes
        }
        columns: dict[str, bytes | None] = {f"{n}_sealed": None for n in cleared}
        columns.update(sealing.seal_pii(key, {**kept, **clean}))
        subjects.update_subject_pii(conn, row.id, columns)
        fields = {
            name: "set" if name in clean else "cleared" if name in cleared else "unchanged"
            for name in PII_FIELDS
        }
        audit_id = record(
            conn,
            runtime,
            principal,
            org_id=org_id,
            action="subject.rectify",
            target=subject_id,
            details={"set": sorted(clean), "cleared": cleared},
        )
        result = {
            "subject_id": subject_id,
            "pii_fields": fields,
            "updated_at": utcnow().isoformat(),
            "audit_id": audit_id,
        }
        if idempotency_key is not None:
            idempotency.store_answer(conn, org_id, idempotency_key, 200, result, subject_id)
    return result


def _live_subject(conn: Connection, org_id: str, subject_id: str, *, lock: bool) -> Any:
    row = subjects.find_subject(conn, org_id, subject_id, lock=lock)
    if row is None:
        raise SubjectNotFoundError(f"no subject {subject_id!r}")
    if row.status == "erased":
        raise SubjectErasedError(f"subject {subject_id!r} was erased")
    return row


# --- erasure after a restore, and the shred -----------------------------------------------------


def reapply_erasures(runtime: Runtime) -> list[tuple[str, str]]:
    """Erase again every subject the erasure log names that the database still holds (a
    restore of an older backup brought it back); ``(org_id, subject_id)`` of each.

    Each is erased as `erase_subject` would, audited as ``subject.erase.reapplied`` with the
    original erasure's time and receipt hash: in the org's log, or in the system log when the
    org's keys are gone (a closed and purged org), since nothing can seal into its log then.
    Idempotent: run it again and it finds nothing.
    """
    with read_transaction(runtime.engine) as conn:
        pending = rights.erased_subjects_still_live(conn)
    done = []
    for entry in pending:
        with write_transaction(runtime.engine) as conn:
            receipt, frame_rows, withdrawn_from = erase_rows(conn, entry.org_id, entry.subject_id)
            sealable = runtime.kms.has_org(entry.org_id)
            record(
                conn,
                runtime,
                None,
                org_id=entry.org_id if sealable else None,
                action="subject.erase.reapplied",
                target=entry.subject_id if sealable else f"{entry.org_id}/{entry.subject_id}",
                details={
                    **receipt,
                    "original_erased_at": entry.erased_at.isoformat(),
                    "original_receipt_sha256": entry.receipt_sha256,
                },
            )
        indexing.catch_up_org(runtime, entry.org_id)
        for watchlist_id in withdrawn_from:
            indexing.refresh_watchlist(runtime, watchlist_id)
        for f in frame_rows:
            runtime.objects.delete(f.object_key)
        done.append((entry.org_id, entry.subject_id))
    return done


def shred_erasures(runtime: Runtime, org_id: str | None = None) -> dict[str, list[int]]:
    """For each org with erasures not yet shredded (or `org_id`): rotate its subject-key
    KEK, rewrap every stored subject key under the new version, destroy every older
    version. Returns the versions destroyed per org. Resumable: an interrupted run rotates
    once more and finishes the work. One run per org at a time across replicas."""
    with read_transaction(runtime.engine) as conn:
        orgs = [org_id] if org_id is not None else rights.orgs_to_shred(conn)
    destroyed: dict[str, list[int]] = {}
    for org in orgs:
        with feed.exclusive(runtime.engine, f"shred:{org}") as mine:
            if mine:
                destroyed[org] = _shred_org(runtime, org)
    return destroyed


def _shred_org(runtime: Runtime, org_id: str) -> list[int]:
    started = utcnow()
    if not runtime.kms.has_org(org_id):
        # A closed org's purge destroyed every key it had: its erasures are shredded already.
        with write_transaction(runtime.engine) as conn:
            rights.mark_shredded(conn, org_id, started, utcnow())
        return []
    keyring = sealing.keyring(runtime)
    destroyed: list[int] = []
    rewrapped = 0
    if keyring.has_family(org_id):
        version = keyring.rotate(org_id)
        rewrapped = _rewrap_subject_keys(runtime, org_id, version)
        with read_transaction(runtime.engine) as conn:
            left = rights.count_subject_keys_below(conn, org_id, version)
        if left:  # a key wrapped under an older version since (another replica): next round
            return []
        destroyed = keyring.destroy_below(org_id, version)
    with write_transaction(runtime.engine) as conn:
        shredded = rights.mark_shredded(conn, org_id, started, utcnow())
        record(
            conn,
            runtime,
            None,
            org_id=org_id,
            action="keys.shred",
            target=org_id,
            details={
                "erasures": shredded,
                "subject_keys_rewrapped": rewrapped,
                "subject_kek_versions_destroyed": destroyed,
            },
        )
    return destroyed


def _rewrap_subject_keys(runtime: Runtime, org_id: str, version: int) -> int:
    keyring = sealing.keyring(runtime)
    done, after = 0, ""
    while True:
        with write_transaction(runtime.engine) as conn:
            rows = rights.subject_keys_below(conn, org_id, version, after, SHRED_BATCH)
            if not rows:
                return done
            for r in rows:
                try:
                    wrapped, now_under = keyring.rewrap(org_id, r.subject_id, bytes(r.wrapped_key))
                except DecryptionError:
                    # Wrapped under a version destroyed already (carried over a restore from
                    # before a shred): it opens nothing any more, and would block the shred.
                    rights.delete_subject_key(conn, org_id, r.subject_id)
                    continue
                rights.set_subject_key(conn, org_id, r.subject_id, wrapped, now_under)
            done += len(rows)
            after = rows[-1].subject_id
