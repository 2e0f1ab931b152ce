"""Hashed references of stored embeddings.

Format 1, made under reference-key version 1 (32 bytes)::

    HMAC-SHA-256(org reference key v1, b"wajah/ref/v1\\0" || lp(model_id) || lp(enrollment_id)
                 || u32(len(vector)) || vector bytes)

Format 2, made under reference-key version v >= 2 (36 bytes)::

    u32(v) || HMAC-SHA-256(org reference key v, b"wajah/ref/v2\\0" || u32(v) || lp(model_id)
                           || lp(enrollment_id) || u32(len(vector)) || vector bytes)

The reference key is per org and held by the KMS like a KEK, so the same vector enrolled in two
orgs yields unrelated references, and a vector edited in the database no longer verifies.
Vectors are hashed as little-endian float32, C order, which is what the index stores.

A reference names the key version it was made under (by its length, and the version prefix of
format 2), so while `wajah keys rotate-references` re-hashes an org's rows every row verifies
under its own version: nothing is flagged as tampered half-way. Once no row is left under an
old version, that version is destroyed and references made under it verify no more.
"""

from __future__ import annotations

import hmac
import struct
from typing import Any

import numpy as np

from app.crypto.errors import KeyStateError, OrgKeyNotFoundError
from app.crypto.kms import KeyManager
from app.crypto.wire import lp

REFERENCE_SIZE = 32
VERSIONED_REFERENCE_SIZE = 36
_PREFIX = b"wajah/ref/v1\x00"
_PREFIX_V2 = b"wajah/ref/v2\x00"
_U32 = struct.Struct(">I")


def reference_version_of(reference: bytes) -> int | None:
    """The reference-key version a stored reference was made under; None if malformed."""
    if len(reference) == REFERENCE_SIZE:
        return 1
    if len(reference) == VERSIONED_REFERENCE_SIZE:
        (version,) = _U32.unpack_from(reference)
        return version if version >= 2 else None
    return None


def _vector_bytes(vector: Any) -> bytes:
    if isinstance(vector, bytes | bytearray | memoryview):
        raw = bytes(vector)
    else:
        arr = np.asarray(vector)
        if arr.dtype != np.float32 or arr.ndim != 1:
            # a silent float64 -> float32 cast would hash something other than what is stored
            raise ValueError("vector must be a 1-D float32 array")
        raw = arr.astype("<f4", copy=False).tobytes(order="C")
    if not raw or len(raw) % 4:
        raise ValueError("vector bytes must be a non-empty whole number of float32s")
    return raw


class ReferenceHasher:
    def __init__(self, kms: KeyManager) -> None:
        self._kms = kms

    @staticmethod
    def _body(model_id: str, enrollment_id: str, vector: Any) -> bytes:
        raw = _vector_bytes(vector)
        return b"".join(
            (
                lp(model_id, "model_id"),
                lp(enrollment_id, "enrollment_id"),
                struct.pack(">I", len(raw)),
                raw,
            )
        )

    def _under(self, org_id: str, version: int, body: bytes) -> bytes:
        if version == 1:
            return self._kms.mac(org_id, _PREFIX + body, version=1)
        tag = _U32.pack(version)
        return tag + self._kms.mac(org_id, _PREFIX_V2 + tag + body, version=version)

    def reference(self, *, org_id: str, model_id: str, enrollment_id: str, vector: Any) -> bytes:
        """The reference under the org's primary reference-key version."""
        version = self._kms.reference_version(org_id)
        return self._under(org_id, version, self._body(model_id, enrollment_id, vector))

    def verify(
        self, reference: bytes, *, org_id: str, model_id: str, enrollment_id: str, vector: Any
    ) -> bool:
        """True iff `reference` matches under the version it names; False (never an
        exception) for a tampered row or one whose key version is destroyed."""
        reference = bytes(reference)
        version = reference_version_of(reference)
        if version is None:
            return False
        try:
            expected = self._under(org_id, version, self._body(model_id, enrollment_id, vector))
        except (ValueError, KeyStateError, OrgKeyNotFoundError):
            return False
        return hmac.compare_digest(expected, reference)

    def __repr__(self) -> str:
        return f"ReferenceHasher(kms={self._kms!r})"
