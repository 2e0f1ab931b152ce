"""Per-subject data keys: what makes an erasure hold against copies of the database.

Every subject has its own 32-byte *subject key* (SK). It seals the subject's PII directly and
is mixed into the key of each of its frames; it is stored only wrapped, under the org's
*subject-key KEK*: a KEK family of its own in the key manager (key-manager org id
``<org_id>/subject-keys``), apart from the org KEK that seals audit details and webhook secrets.
Erasing a subject deletes its wrapped SK. Copies of the wrapped SK survive in backups; they
die when the subject-key KEK versions that wrapped them are destroyed (`SubjectKeyring.shred`:
rotate, rewrap every live SK under the new version, destroy the older ones). That costs only
the SKs' own rewrapping — no frame, PII blob or audit row is touched — which is why the
subject keys have a KEK family of their own: destroying a version of the org KEK would also
destroy the seven-year audit details sealed under it.

Wire formats (integers big-endian; ``context = lp(org_id) || lp(object_id) || lp(purpose)``
as in `app.crypto.wire`):

Wrapped subject key: the 65-byte wrapped-DEK format 1 of `app.crypto.wire`, made by the key
manager for key-manager org ``<org_id>/subject-keys`` with context
``b"wajah/subject-key/v1\\0" || lp(org_id) || lp(subject_id)``.

Subject-sealed blob (PII), format 2::

    offset  size  field
    0       1     0x02  subject-sealed blob format version
    1       12    nonce (random, 96 bit)
    13      n     AES-256-GCM ciphertext of the plaintext under the SK
    13+n    16    GCM tag

    associated data = b"wajah/subject-payload/v2\\0" || lp(subject_id) || context

Frames keep the detached envelope of `app.crypto.envelope` (a fresh DEK wrapped by the org
KEK, so `wajah keys rotate` rewraps them as before), but their payload key is
``HKDF-SHA-256(ikm=DEK, salt=SK, info=b"wajah/frame-payload/v2\\0" || context)``: opening
one needs both the org KEK and the subject's SK. The payload layout (nonce || ciphertext ||
tag, associated data as format 1's) is unchanged; a frame sealed before subject keys existed
opens under its DEK alone.
"""

from __future__ import annotations

import contextlib
import os

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.ciphers.aead import AESGCM
from cryptography.hazmat.primitives.kdf.hkdf import HKDF

from app.crypto.envelope import SealedObject
from app.crypto.errors import DecryptionError, KeyStateError
from app.crypto.kms import KekState, KeyManager
from app.crypto.wire import (
    DEK_SIZE,
    NONCE_SIZE,
    TAG_SIZE,
    WRAPPED_DEK_SIZE,
    Purpose,
    encode_context,
    kek_version_of,
    lp,
    payload_aad,
)

SUBJECT_BLOB_VERSION = 0x02
SUBJECT_KEK_SUFFIX = "/subject-keys"
_KEY_CONTEXT = b"wajah/subject-key/v1\x00"
_PAYLOAD_AAD = b"wajah/subject-payload/v2\x00"
_FRAME_INFO = b"wajah/frame-payload/v2\x00"
MIN_SUBJECT_BLOB_SIZE = 1 + NONCE_SIZE + TAG_SIZE


def subject_kek_id(org_id: str) -> str:
    """The key-manager org id of an org's subject-key KEK family."""
    return org_id + SUBJECT_KEK_SUFFIX


def is_subject_sealed(blob: bytes) -> bool:
    """Whether a stored blob is subject-sealed (format 2) rather than an org envelope."""
    return len(blob) >= MIN_SUBJECT_BLOB_SIZE and blob[0] == SUBJECT_BLOB_VERSION


class SubjectKey:
    """One subject's unwrapped key, in memory only; seals and opens that subject's data."""

    __slots__ = ("_key", "org_id", "subject_id")

    def __init__(self, key: bytes, org_id: str, subject_id: str) -> None:
        if len(key) != DEK_SIZE:
            raise ValueError("a subject key is 32 bytes")
        self._key = key
        self.org_id = org_id
        self.subject_id = subject_id

    def __repr__(self) -> str:
        return f"SubjectKey(org_id={self.org_id!r}, subject_id={self.subject_id!r})"

    def _aad(self, object_id: str, purpose: Purpose) -> bytes:
        context = encode_context(self.org_id, object_id, purpose)
        return _PAYLOAD_AAD + lp(self.subject_id, "subject_id") + context

    def seal(self, plaintext: bytes, *, object_id: str, purpose: Purpose) -> bytes:
        nonce = os.urandom(NONCE_SIZE)
        body = AESGCM(self._key).encrypt(nonce, plaintext, self._aad(object_id, purpose))
        return bytes([SUBJECT_BLOB_VERSION]) + nonce + body

    def open(self, blob: bytes, *, object_id: str, purpose: Purpose) -> bytes:
        if not is_subject_sealed(blob):
            raise DecryptionError()
        try:
            aad = self._aad(object_id, purpose)
            return AESGCM(self._key).decrypt(blob[1 : 1 + NONCE_SIZE], blob[1 + NONCE_SIZE :], aad)
        except (InvalidTag, ValueError):
            raise DecryptionError() from None

    def _frame_key(self, dek: bytes, context: bytes) -> AESGCM:
        derived = HKDF(
            algorithm=hashes.SHA256(), length=32, salt=self._key, info=_FRAME_INFO + context
        ).derive(dek)
        return AESGCM(derived)

    def seal_frame(self, kms: KeyManager, plaintext: bytes, *, object_id: str) -> SealedObject:
        """A frame sealed for detached storage: the DEK wrapped by the org KEK, the payload
        under a key derived from the DEK and this subject key."""
        context = encode_context(self.org_id, object_id, Purpose.FRAME)
        dek = AESGCM.generate_key(bit_length=256)
        wrapped = kms.wrap_dek(self.org_id, dek, context)
        nonce = os.urandom(NONCE_SIZE)
        body = self._frame_key(dek, context).encrypt(nonce, plaintext, payload_aad(context))
        return SealedObject(wrapped, bytearray(nonce + body), kek_version_of(wrapped))

    def open_frame(
        self, kms: KeyManager, wrapped_dek: bytes, payload: bytes, *, object_id: str
    ) -> bytes:
        context = encode_context(self.org_id, object_id, Purpose.FRAME)
        if len(wrapped_dek) != WRAPPED_DEK_SIZE or len(payload) < NONCE_SIZE + TAG_SIZE:
            raise DecryptionError()
        dek = kms.unwrap_dek(self.org_id, wrapped_dek, context)
        try:
            return self._frame_key(dek, context).decrypt(
                payload[:NONCE_SIZE], payload[NONCE_SIZE:], payload_aad(context)
            )
        except InvalidTag:
            raise DecryptionError() from None


class SubjectKeyring:
    """Creates, unwraps, rewraps and shreds subject keys through a key manager."""

    def __init__(self, kms: KeyManager) -> None:
        self._kms = kms

    @staticmethod
    def _context(org_id: str, subject_id: str) -> bytes:
        return _KEY_CONTEXT + lp(org_id, "org_id") + lp(subject_id, "subject_id")

    def _ensure_family(self, org_id: str) -> str:
        family = subject_kek_id(org_id)
        if not self._kms.has_org(family):
            with contextlib.suppress(KeyStateError):  # another process created it first
                self._kms.create_org(family)
        return family

    def new_key(self, org_id: str, subject_id: str) -> tuple[SubjectKey, bytes, int]:
        """A fresh subject key, its wrapped form and the subject-key KEK version that
        wrapped it (store both)."""
        family = self._ensure_family(org_id)
        key = AESGCM.generate_key(bit_length=256)
        wrapped = self._kms.wrap_dek(family, key, self._context(org_id, subject_id))
        return SubjectKey(key, org_id, subject_id), wrapped, kek_version_of(wrapped)

    def open_key(self, org_id: str, subject_id: str, wrapped: bytes) -> SubjectKey:
        """The subject key; `DecryptionError` once its KEK version is destroyed."""
        family = subject_kek_id(org_id)
        if not self._kms.has_org(family):
            raise DecryptionError()
        key = self._kms.unwrap_dek(family, bytes(wrapped), self._context(org_id, subject_id))
        return SubjectKey(key, org_id, subject_id)

    def rewrap(self, org_id: str, subject_id: str, wrapped: bytes) -> tuple[bytes, int]:
        """The wrapped key under the primary version (unchanged if already there)."""
        family = subject_kek_id(org_id)
        new = self._kms.rewrap_dek(family, bytes(wrapped), self._context(org_id, subject_id))
        return new, kek_version_of(new)

    def has_family(self, org_id: str) -> bool:
        return self._kms.has_org(subject_kek_id(org_id))

    def rotate(self, org_id: str) -> int:
        """A new primary subject-key KEK version; returns it."""
        return self._kms.rotate(self._ensure_family(org_id))

    def primary_version(self, org_id: str) -> int:
        return self._kms.primary_version(subject_kek_id(org_id))

    def destroy_below(self, org_id: str, version: int) -> list[int]:
        """Destroy every live subject-key KEK version below ``version``; the versions
        destroyed now. The caller first rewraps every stored key to ``version`` or newer."""
        family = subject_kek_id(org_id)
        destroyed = []
        for info in self._kms.versions(family):
            if info.version < version and info.state != KekState.DESTROYED:
                self._kms.destroy_version(family, info.version)
                destroyed.append(info.version)
        return destroyed
