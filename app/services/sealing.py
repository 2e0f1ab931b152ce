"""A subject's data sealed under its own key (`app.crypto.subject_keys`): get or create the
key, seal and open PII, open a frame. Erasure deletes the key (`app.services.subjects`); the
shred (`app.services.rights`) destroys what could open backup copies of it."""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from app.crypto import DecryptionError, Purpose
from app.crypto.subject_keys import SubjectKey, SubjectKeyring, is_subject_sealed
from app.crypto.wire import join_blob
from app.runtime import Runtime
from app.storage import Connection, read_transaction, rights, write_transaction

PII_FIELDS = {"nik": Purpose.PII_NIK, "email": Purpose.PII_EMAIL, "phone": Purpose.PII_PHONE}


def keyring(runtime: Runtime) -> SubjectKeyring:
    return SubjectKeyring(runtime.kms)


def pii_object_id(org_id: str, subject_id: str, name: str) -> str:
    return f"{org_id}/{subject_id}/{name}"


def ensure_subject_key(runtime: Runtime, org_id: str, subject_id: str) -> SubjectKey:
    """The subject's key, created (in a transaction of its own) if it has none yet.

    Created before the enrollment's transaction because the frames are sealed before it. Two
    first enrollments of one subject both create one; the first insert wins and both use it.
    A key whose enrollment then fails stays, with nothing under it, until the subject is
    enrolled or erased.
    """
    with read_transaction(runtime.engine) as conn:
        key = subject_key_in(conn, runtime, org_id, subject_id)
    if key is not None:
        return key
    made, wrapped, version = keyring(runtime).new_key(org_id, subject_id)
    with write_transaction(runtime.engine) as conn:
        if rights.insert_subject_key(conn, org_id, subject_id, wrapped, version):
            return made
        key = subject_key_in(conn, runtime, org_id, subject_id)
    if key is None:  # inserted and deleted (an erasure) between our two statements
        raise DecryptionError()
    return key


def subject_key_in(
    conn: Connection, runtime: Runtime, org_id: str, subject_id: str
) -> SubjectKey | None:
    """The subject's key read in the caller's transaction; None when it has none (erased,
    or its data predates subject keys) or it no longer opens."""
    row = rights.find_subject_key(conn, org_id, subject_id)
    if row is None:
        return None
    try:
        return keyring(runtime).open_key(org_id, subject_id, bytes(row.wrapped_key))
    except DecryptionError:
        return None


def seal_pii(key: SubjectKey, pii: Mapping[str, str]) -> dict[str, bytes]:
    """The sealed-PII columns (`nik_sealed` ...) for the fields given, under the subject key."""
    return {
        f"{name}_sealed": key.seal(
            value.encode(),
            object_id=pii_object_id(key.org_id, key.subject_id, name),
            purpose=PII_FIELDS[name],
        )
        for name, value in pii.items()
    }


def open_pii(runtime: Runtime, row: Any, key: SubjectKey | None) -> dict[str, str | None]:
    """A subject row's PII, opened: under its key, or (sealed before subject keys) under the
    org KEK. A field that does not open is None: shredded or tampered, never guessed."""
    opened: dict[str, str | None] = {}
    for name in PII_FIELDS:
        blob = getattr(row, f"{name}_sealed")
        opened[name] = None if blob is None else _open_field(runtime, row, key, name, bytes(blob))
    return opened


def _open_field(
    runtime: Runtime, row: Any, key: SubjectKey | None, name: str, blob: bytes
) -> str | None:
    object_id = pii_object_id(row.org_id, row.subject_id, name)
    purpose = PII_FIELDS[name]
    try:
        if not is_subject_sealed(blob):
            plain = runtime.cipher.open(
                blob, org_id=row.org_id, object_id=object_id, purpose=purpose
            )
        elif key is not None:
            plain = key.open(blob, object_id=object_id, purpose=purpose)
        else:
            return None
    except DecryptionError:
        return None
    return plain.decode()


def open_frame(
    runtime: Runtime,
    org_id: str,
    key: SubjectKey | None,
    frame_id: str,
    wrapped_dek: bytes,
    payload: bytes,
) -> bytes:
    """A sealed frame's bytes (for re-embedding; never served). Frames sealed before subject
    keys open under their DEK alone. `DecryptionError` when neither opens."""
    if key is not None:
        try:
            return key.open_frame(runtime.kms, wrapped_dek, payload, object_id=frame_id)
        except DecryptionError:
            pass
    return runtime.cipher.open(
        join_blob(wrapped_dek, payload), org_id=org_id, object_id=frame_id, purpose=Purpose.FRAME
    )
