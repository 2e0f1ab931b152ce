"""The key lifecycle of an org: rotate, retire, destroy, and the reference key's rotation.

What wraps what (`app.storage.wrapped` reads each of them by key version):

* the org KEK (key-manager org id = the org id) wraps each frame's DEK (and each source
  document's, `app.services.onboarding`), the DEK of every audit row's details, the DEK of
  PII sealed before subject keys existed, and that of each webhook signing secret;
* the org's subject-key KEK (``<org_id>/subject-keys``, `app.crypto.subject_keys`) wraps each
  subject's key, which seals that subject's PII and is mixed into its frames' keys;
* the org's reference key (versioned, `app.crypto.references`) makes the hashed reference of
  every enrollment and of every watchlist entry the org contributed.

`rotate_org_keys` makes new primary versions of both KEKs and rewraps everything under the
older ones, in committed batches (an interrupted run is resumed by running it again with
``resume``: only rows still under an older version are read). Audit rows never change, so an
audit DEK is rewrapped into ``audit_detail_keys`` and the row's own copy dies with its version.
`retire_kek_version` marks an old version as on its way out (it still unwraps, it never wraps);
`destroy_kek_version` destroys a retired version, refused while any row is still under it.
`rotate_references` makes a new reference-key version and re-hashes every reference under the
older ones; each row keeps verifying under the version it names until the old version is
destroyed (`destroy_reference_version`, refused while an intact row still names it).

Every step is audited in the org's log (``_system``: the system log). One job per org at a
time across replicas and CLI processes (`feed.exclusive`).
"""

from __future__ import annotations

import functools
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any

import numpy as np

from app.crypto import DecryptionError, KekState, KekVersionInfo, Purpose
from app.crypto.subject_keys import is_subject_sealed, subject_kek_id
from app.crypto.wire import kek_version_of, split_blob
from app.errors import ConflictError, NotFoundError
from app.runtime import Runtime
from app.services import sealing
from app.services.principal import record
from app.services.watchlists import OrgNotFoundError
from app.storage import (
    Connection,
    feed,
    orgs,
    read_transaction,
    rights,
    write_transaction,
)
from app.storage import wrapped as rows_under
from app.storage.audit import SYSTEM_CHAIN
from app.storage.webhooks import record_event

#: (what, rows done, rows in all) after each committed batch.
Progress = Callable[[str, int, int], None]
REFERENCE_TABLES = ("enrollments", "watchlist_entries")


class Family(StrEnum):
    """The KEK families of an org."""

    ORG = "org"
    SUBJECT_KEYS = "subject-keys"


class KeyVersionNotFoundError(NotFoundError):
    code = "key_version_not_found"


class KeyStateConflictError(ConflictError):
    """The version's state does not allow it (the primary, destroyed, not retired yet)."""

    code = "key_state"


class KeyInUseError(ConflictError):
    """Rows are still wrapped (or hashed) under the version; nothing was changed."""

    code = "key_in_use"


@dataclass
class RotationReport:
    kek_version: int
    subject_kek_version: int | None
    rewrapped: dict[str, int] = field(default_factory=dict)  # per kind of row
    failed: dict[str, list[str]] = field(default_factory=dict)  # ids that did not unwrap


@dataclass
class RehashReport:
    reference_version: int
    rehashed: dict[str, int] = field(default_factory=dict)  # per table
    tampered: dict[str, list[str]] = field(default_factory=dict)  # did not verify: left alone


def _is_system(org_id: str) -> bool:
    return org_id == SYSTEM_CHAIN


def _audit_org(org_id: str) -> str | None:
    return None if _is_system(org_id) else org_id


def check_org(runtime: Runtime, org_id: str) -> None:
    """The org exists (or is ``_system``, the system log's key) and still has its keys."""
    if not _is_system(org_id):
        with read_transaction(runtime.engine) as conn:
            if not orgs.org_exists(conn, org_id):
                raise OrgNotFoundError(f"no org {org_id!r}")
    if not runtime.kms.has_org(org_id):
        raise OrgNotFoundError(f"org {org_id!r} has no keys (destroyed with the org)")


@contextmanager
def _one_job(runtime: Runtime, name: str, org_id: str) -> Iterator[None]:
    with feed.exclusive(runtime.engine, f"{name}:{org_id}") as mine:
        if not mine:
            raise ConflictError(f"a key job of org {org_id!r} is running elsewhere; retry later")
        yield


def _audit(runtime: Runtime, conn: Connection, org_id: str, action: str, details: Any) -> None:
    record(
        conn,
        runtime,
        None,
        org_id=_audit_org(org_id),
        action=action,
        target=org_id,
        details=details,
        actor="cli",
    )


# --- rotation ---------------------------------------------------------------------------------


def rotate_org_keys(
    runtime: Runtime,
    org_id: str,
    *,
    resume: bool = False,
    batch: int = 500,
    progress: Progress | None = None,
) -> RotationReport:
    """Rotate the org KEK and the subject-key KEK (unless ``resume``), then rewrap every
    frame DEK, sealed PII, subject key and audit-detail DEK still under an older version."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    check_org(runtime, org_id)
    keyring = sealing.keyring(runtime)
    with _one_job(runtime, "rewrap", org_id):
        if not resume:
            kek = runtime.kms.rotate(org_id)
            subject_kek = None if _is_system(org_id) else _rotate_subject_keys(runtime, org_id)
            with write_transaction(runtime.engine) as conn:
                details = {"kek_version": kek, "subject_kek_version": subject_kek}
                _audit(runtime, conn, org_id, "keys.rotate", details)
                if not _is_system(org_id):
                    record_event(conn, org_id, "key.rotated", {"key": "kek", **details})
        has_family = not _is_system(org_id) and keyring.has_family(org_id)
        report = RotationReport(
            runtime.kms.primary_version(org_id),
            keyring.primary_version(org_id) if has_family else None,
        )
        for kind, step in _REWRAP_STEPS.items():
            if kind == "subject_keys" and report.subject_kek_version is None:
                continue
            if kind in ("webhook_secrets", "source_documents") and _is_system(org_id):
                continue
            report.rewrapped[kind], report.failed[kind] = _run_batches(
                runtime, org_id, kind, step, report, batch, progress
            )
        with write_transaction(runtime.engine) as conn:
            summary = {
                "kek_version": report.kek_version,
                "subject_kek_version": report.subject_kek_version,
                "rewrapped": report.rewrapped,
                "failed": {k: len(v) for k, v in report.failed.items()},
            }
            _audit(runtime, conn, org_id, "keys.rewrap.done", summary)
    return report


def _rotate_subject_keys(runtime: Runtime, org_id: str) -> int | None:
    keyring = sealing.keyring(runtime)
    return keyring.rotate(org_id) if keyring.has_family(org_id) else None


# One step: rewrap the next batch after a cursor in the caller's transaction; returns
# (rows read, rows rewrapped, ids that failed, the next cursor).
Step = Callable[
    [Runtime, Connection, str, RotationReport, Any, int], tuple[int, int, list[str], Any]
]


def _run_batches(
    runtime: Runtime,
    org_id: str,
    kind: str,
    step: Step,
    report: RotationReport,
    batch: int,
    progress: Progress | None,
) -> tuple[int, list[str]]:
    total = _count_below(runtime, org_id, kind, report)
    done, rewrapped, failed = 0, 0, list[str]()
    cursor: Any = 0 if kind == "audit_details" else ""
    if progress is not None:
        progress(kind, 0, total)
    while True:
        with write_transaction(runtime.engine) as conn:
            read, moved, bad, cursor = step(runtime, conn, org_id, report, cursor, batch)
            if not read:
                break
            if moved or bad:
                version = (
                    report.subject_kek_version if kind == "subject_keys" else report.kek_version
                )
                details = {"rows": kind, "rewrapped": moved, "failed": len(bad)}
                _audit(runtime, conn, org_id, "keys.rewrap", {**details, "kek_version": version})
        done, rewrapped, failed = done + read, rewrapped + moved, failed + bad
        if progress is not None:
            progress(kind, min(done, max(total, done)), max(total, done))
    return rewrapped, failed


def _count_below(runtime: Runtime, org_id: str, kind: str, report: RotationReport) -> int:
    with read_transaction(runtime.engine) as conn:
        if kind == "frames":
            return rows_under.count_frames(conn, org_id, "<", report.kek_version)
        if kind == "pii":
            return rows_under.count_pii(conn, org_id, "<", report.kek_version)
        if kind == "subject_keys":
            version = report.subject_kek_version or 0
            return rows_under.count_subject_keys(conn, org_id, "<", version)
        if kind == "webhook_secrets":
            return rows_under.count_webhook_secrets(conn, org_id, "<", report.kek_version)
        if kind == "source_documents":
            return rows_under.count_documents(conn, org_id, "<", report.kek_version)
        return rows_under.count_audit_details(conn, org_id, "<", report.kek_version)


def _rewrap_frame_deks(
    runtime: Runtime, org_id: str, rows: list[Any], set_dek: Callable[..., int]
) -> tuple[int, list[str]]:
    """Rewrap the DEKs of rows sealed as frames are (frames, source documents)."""
    moved, failed = 0, []
    for row in rows:
        old = bytes(row.wrapped_dek)
        try:
            new = runtime.cipher.rewrap(old, org_id=org_id, object_id=row.id, purpose=Purpose.FRAME)
        except DecryptionError:
            failed.append(row.id)
            continue
        moved += set_dek(row.id, old, new, kek_version_of(new))
    return moved, failed


def _frames_step(
    runtime: Runtime, conn: Connection, org_id: str, report: RotationReport, after: Any, n: int
) -> tuple[int, int, list[str], Any]:
    rows = rows_under.frames_below(conn, org_id, report.kek_version, after, n)
    moved, failed = _rewrap_frame_deks(
        runtime, org_id, rows, functools.partial(rows_under.set_frame_dek, conn)
    )
    return len(rows), moved, failed, rows[-1].id if rows else after


def _pii_step(
    runtime: Runtime, conn: Connection, org_id: str, report: RotationReport, after: Any, n: int
) -> tuple[int, int, list[str], Any]:
    rows = rows_under.pii_below(conn, org_id, report.kek_version, after, n)
    moved, failed = 0, []
    for row in rows:
        for name, purpose in sealing.PII_FIELDS.items():
            blob = getattr(row, f"{name}_sealed")
            if blob is None or is_subject_sealed(bytes(blob)):
                continue
            object_id = sealing.pii_object_id(org_id, row.subject_id, name)
            try:
                new = runtime.cipher.rewrap(
                    bytes(blob), org_id=org_id, object_id=object_id, purpose=purpose
                )
            except DecryptionError:
                failed.append(f"{row.subject_id}/{name}")
                continue
            if new != bytes(blob):
                moved += rows_under.set_pii_blob(conn, row.id, f"{name}_sealed", bytes(blob), new)
    return len(rows), moved, failed, rows[-1].id if rows else after


def _subject_keys_step(
    runtime: Runtime, conn: Connection, org_id: str, report: RotationReport, after: Any, n: int
) -> tuple[int, int, list[str], Any]:
    keyring = sealing.keyring(runtime)
    rows = rights.subject_keys_below(conn, org_id, report.subject_kek_version or 0, after, n)
    moved, failed = 0, []
    for row in rows:
        try:
            new, version = keyring.rewrap(org_id, row.subject_id, bytes(row.wrapped_key))
        except DecryptionError:
            failed.append(row.subject_id)
            continue
        rights.set_subject_key(conn, org_id, row.subject_id, new, version)
        moved += 1
    return len(rows), moved, failed, rows[-1].subject_id if rows else after


def _audit_step(
    runtime: Runtime, conn: Connection, org_id: str, report: RotationReport, after: Any, n: int
) -> tuple[int, int, list[str], Any]:
    rows = rows_under.audit_details_below(conn, org_id, report.kek_version, after, n)
    moved, failed = 0, []
    for row in rows:
        # The DEK as it opens today: rewrapped before (a rotation earlier), or the blob's own.
        current = bytes(row.details_dek or split_blob(bytes(row.details_sealed))[0])
        try:
            new = runtime.cipher.rewrap(
                current, org_id=org_id, object_id=row.id, purpose=Purpose.AUDIT_DETAIL
            )
        except DecryptionError:
            failed.append(row.id)
            continue
        rows_under.set_audit_detail_key(conn, row.id, org_id, new, kek_version_of(new))
        moved += 1
    return len(rows), moved, failed, int(rows[-1].chain_seq) if rows else after


def _webhook_secrets_step(
    runtime: Runtime, conn: Connection, org_id: str, report: RotationReport, after: Any, n: int
) -> tuple[int, int, list[str], Any]:
    rows = rows_under.webhook_secrets_below(conn, org_id, report.kek_version, after, n)
    moved, failed = 0, []
    for row in rows:
        for column in rows_under.SECRET_COLUMNS:
            blob = getattr(row, column)
            if blob is None:
                continue
            try:
                new = runtime.cipher.rewrap(
                    bytes(blob), org_id=org_id, object_id=row.id, purpose=Purpose.WEBHOOK_SECRET
                )
            except DecryptionError:
                failed.append(f"{row.id}/{column}")
                continue
            if new != bytes(blob):
                moved += rows_under.set_webhook_secret(conn, row.id, column, bytes(blob), new)
    return len(rows), moved, failed, rows[-1].id if rows else after


def _documents_step(
    runtime: Runtime, conn: Connection, org_id: str, report: RotationReport, after: Any, n: int
) -> tuple[int, int, list[str], Any]:
    """Source documents (`app.services.onboarding`): sealed as frames are, so rewrapped so."""
    rows = rows_under.documents_below(conn, org_id, report.kek_version, after, n)
    moved, failed = _rewrap_frame_deks(
        runtime, org_id, rows, functools.partial(rows_under.set_document_dek, conn)
    )
    return len(rows), moved, failed, rows[-1].id if rows else after


_REWRAP_STEPS: dict[str, Step] = {
    "frames": _frames_step,
    "source_documents": _documents_step,
    "pii": _pii_step,
    "subject_keys": _subject_keys_step,
    "audit_details": _audit_step,
    "webhook_secrets": _webhook_secrets_step,
}


# --- retire and destroy -------------------------------------------------------------------------


def _kms_id(org_id: str, family: Family) -> str:
    return subject_kek_id(org_id) if family is Family.SUBJECT_KEYS else org_id


def _version_info(runtime: Runtime, org_id: str, family: Family, version: int) -> KekVersionInfo:
    check_org(runtime, org_id)
    kms_id = _kms_id(org_id, family)
    if family is Family.SUBJECT_KEYS and not runtime.kms.has_org(kms_id):
        raise KeyVersionNotFoundError(f"org {org_id!r} has no subject-key KEK")
    versions = runtime.kms.versions(kms_id)
    found = next((v for v in versions if v.version == version), None)
    if found is None:
        raise KeyVersionNotFoundError(
            f"org {org_id!r} has no {family} KEK version {version} "
            f"(versions 1..{versions[-1].version})"
        )
    if found.state is KekState.PRIMARY:
        raise KeyStateConflictError(
            f"version {version} is the primary {family} KEK of org {org_id!r}: rotate first "
            "(wajah keys rotate)"
        )
    if found.state is KekState.DESTROYED:
        raise KeyStateConflictError(f"{family} KEK version {version} is destroyed already")
    return found


def dependents(runtime: Runtime, org_id: str, family: Family, version: int) -> dict[str, int]:
    """How many rows are wrapped under this KEK version, per kind of row."""
    with read_transaction(runtime.engine) as conn:
        if family is Family.SUBJECT_KEYS:
            return {"subject_keys": rows_under.count_subject_keys(conn, org_id, "==", version)}
        return {
            "frames": rows_under.count_frames(conn, org_id, "==", version),
            "source_documents": rows_under.count_documents(conn, org_id, "==", version),
            "pii": rows_under.count_pii(conn, org_id, "==", version),
            "audit_details": rows_under.count_audit_details(conn, org_id, "==", version),
            "webhook_secrets": rows_under.count_webhook_secrets(conn, org_id, "==", version),
        }


def retire_kek_version(
    runtime: Runtime, org_id: str, version: int, family: Family = Family.ORG
) -> dict[str, int]:
    """Retire a non-primary version (it still unwraps, it never wraps again); returns what
    still depends on it (`rotate_org_keys` with ``resume`` moves it)."""
    info = _version_info(runtime, org_id, family, version)
    if info.state is not KekState.RETIRED:
        runtime.kms.retire_version(_kms_id(org_id, family), version)
    left = dependents(runtime, org_id, family, version)
    with write_transaction(runtime.engine) as conn:
        details = {"family": str(family), "kek_version": version, "dependents": left}
        _audit(runtime, conn, org_id, "keys.retire", details)
    return left


def destroy_kek_version(
    runtime: Runtime, org_id: str, version: int, family: Family = Family.ORG
) -> None:
    """Destroy a retired version: whatever it wrapped becomes unrecoverable, wherever copies
    are. Refused (`KeyInUseError`, nothing changed) while any row is still wrapped under it."""
    with _one_job(runtime, "rewrap", org_id):
        info = _version_info(runtime, org_id, family, version)
        if info.state not in (KekState.RETIRED, KekState.DISABLED):
            raise KeyStateConflictError(
                f"{family} KEK version {version} of org {org_id!r} is not retired: retire it "
                "first (wajah keys retire)"
            )
        left = {kind: n for kind, n in dependents(runtime, org_id, family, version).items() if n}
        if left:
            counts = ", ".join(f"{n} {kind}" for kind, n in left.items())
            raise KeyInUseError(
                f"{family} KEK version {version} of org {org_id!r} still wraps {counts}: "
                "rewrap them first (wajah keys rotate --resume)",
                dependents=left,
            )
        runtime.kms.destroy_version(_kms_id(org_id, family), version)
        with write_transaction(runtime.engine) as conn:
            details = {"family": str(family), "kek_version": version}
            _audit(runtime, conn, org_id, "keys.destroy", details)


# --- the reference key --------------------------------------------------------------------------


def rotate_references(
    runtime: Runtime,
    org_id: str,
    *,
    resume: bool = False,
    batch: int = 500,
    progress: Progress | None = None,
) -> RehashReport:
    """A new reference-key version (unless ``resume``), then every hashed reference under an
    older version re-hashed: verified under its own version first, so a tampered row is never
    laundered into a valid one (it is reported and left alone)."""
    if batch < 1:
        raise ValueError("batch must be at least 1")
    if _is_system(org_id):
        raise OrgNotFoundError("the system log has no reference key")
    check_org(runtime, org_id)
    with _one_job(runtime, "references", org_id):
        if not resume:
            version = runtime.kms.rotate_reference_key(org_id)
            with write_transaction(runtime.engine) as conn:
                details = {"reference_version": version}
                _audit(runtime, conn, org_id, "keys.rotate_references", details)
                record_event(conn, org_id, "key.rotated", {"key": "reference", **details})
        report = RehashReport(runtime.kms.reference_version(org_id))
        for table in REFERENCE_TABLES:
            _rehash_table(runtime, org_id, table, report, batch, progress)
        with write_transaction(runtime.engine) as conn:
            summary = {
                "reference_version": report.reference_version,
                "rehashed": report.rehashed,
                "tampered": {t: len(ids) for t, ids in report.tampered.items()},
            }
            _audit(runtime, conn, org_id, "keys.rehash.done", summary)
    return report


def _rehash_table(
    runtime: Runtime,
    org_id: str,
    table: str,
    report: RehashReport,
    batch: int,
    progress: Progress | None,
) -> None:
    primary = report.reference_version
    with read_transaction(runtime.engine) as conn:
        total = rows_under.count_references(conn, table, org_id, "<", primary)
    done, after = 0, ""
    report.rehashed[table], report.tampered[table] = 0, []
    if progress is not None:
        progress(table, 0, total)
    while True:
        with write_transaction(runtime.engine) as conn:
            rows = rows_under.references_below(conn, table, org_id, primary, after, batch)
            if not rows:
                return
            moved = sum(_rehash_row(runtime, conn, org_id, table, row, report) for row in rows)
            if moved:
                details = {"rows": table, "rehashed": moved, "reference_version": primary}
                _audit(runtime, conn, org_id, "keys.rehash", details)
        report.rehashed[table] += moved
        done, after = done + len(rows), rows[-1].id
        if progress is not None:
            progress(table, min(done, max(total, done)), max(total, done))


def _rehash_row(
    runtime: Runtime, conn: Connection, org_id: str, table: str, row: Any, report: RehashReport
) -> bool:
    old = bytes(row.hashed_ref)
    ids = {"org_id": org_id, "model_id": row.model_id, "enrollment_id": row.id}
    vector = None if row.vector is None else np.frombuffer(bytes(row.vector), dtype="<f4")
    if vector is None or not runtime.hasher.verify(old, **ids, vector=vector):
        report.tampered[table].append(row.id)
        return False
    new = runtime.hasher.reference(**ids, vector=vector)
    return rows_under.set_reference(conn, table, row.id, old, new)


def reference_dependents(runtime: Runtime, org_id: str, version: int) -> dict[str, int]:
    """Rows hashed under this reference-key version that still verify, per table (a row
    that does not verify was tampered with and matches nothing whatever happens)."""
    counts = {}
    with read_transaction(runtime.engine) as conn:
        for table in REFERENCE_TABLES:
            rows = rows_under.references_under(conn, table, org_id, version)
            counts[table] = sum(
                row.vector is not None
                and runtime.hasher.verify(
                    bytes(row.hashed_ref),
                    org_id=org_id,
                    model_id=row.model_id,
                    enrollment_id=row.id,
                    vector=np.frombuffer(bytes(row.vector), dtype="<f4"),
                )
                for row in rows
            )
    return counts


def destroy_reference_version(runtime: Runtime, org_id: str, version: int) -> None:
    """Destroy an old reference-key version: references made under it verify no more.
    Refused (`KeyInUseError`, nothing changed) while an intact row still names it."""
    if _is_system(org_id):
        raise OrgNotFoundError("the system log has no reference key")
    check_org(runtime, org_id)
    with _one_job(runtime, "references", org_id):
        versions = runtime.kms.reference_versions(org_id)
        found = next((v for v in versions if v.version == version), None)
        if found is None:
            raise KeyVersionNotFoundError(
                f"org {org_id!r} has no reference key version {version} "
                f"(versions 1..{versions[-1].version})"
            )
        if found.state is KekState.PRIMARY:
            raise KeyStateConflictError(
                f"version {version} is the primary reference key of org {org_id!r}: rotate "
                "first (wajah keys rotate-references)"
            )
        if found.state is KekState.DESTROYED:
            raise KeyStateConflictError(f"reference key version {version} is destroyed already")
        left = {t: n for t, n in reference_dependents(runtime, org_id, version).items() if n}
        if left:
            counts = ", ".join(f"{n} {table}" for table, n in left.items())
            raise KeyInUseError(
                f"reference key version {version} of org {org_id!r} still hashes {counts}: "
                "re-hash them first (wajah keys rotate-references --resume)",
                dependents=left,
            )
        runtime.kms.destroy_reference_version(org_id, version)
        with write_transaction(runtime.engine) as conn:
            _audit(runtime, conn, org_id, "keys.destroy_reference", {"reference_version": version})
