"""Hashed references of stored embeddings.

reference = HMAC-SHA-256(org reference key, b"wajah/ref/v1\\0" || lp(model_id) ||
lp(enrollment_id) || u32(len(vector)) || vector bytes), 32 bytes.

The reference key is per org and held by the KMS like a KEK, so the same vector enrolled in two
orgs yields unrelated references, and a vector edited in the database no longer verifies.
Vectors are hashed as little-endian float32, C order, which is what the index stores.
"""

from __future__ import annotations

import hmac
import struct
from typing import Any

import numpy as np

from app.crypto.kms import KeyManager
from app.crypto.wire import lp

REFERENCE_SIZE = 32
_PREFIX = b"wajah/ref/v1\x00"


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

    def _message(self, model_id: str, enrollment_id: str, vector: Any) -> bytes:
        raw = _vector_bytes(vector)
        return b"".join(
            (
                _PREFIX,
                lp(model_id, "model_id"),
                lp(enrollment_id, "enrollment_id"),
                struct.pack(">I", len(raw)),
                raw,
            )
        )

    def reference(self, *, org_id: str, model_id: str, enrollment_id: str, vector: Any) -> bytes:
        return self._kms.mac(org_id, self._message(model_id, enrollment_id, vector))

    def verify(
        self, reference: bytes, *, org_id: str, model_id: str, enrollment_id: str, vector: Any
    ) -> bool:
        """True iff `reference` matches; False (never an exception) for a tampered row."""
        try:
            expected = self.reference(
                org_id=org_id, model_id=model_id, enrollment_id=enrollment_id, vector=vector
            )
        except ValueError:
            return False
        return hmac.compare_digest(expected, bytes(reference))

    def __repr__(self) -> str:
        return f"ReferenceHasher(kms={self._kms!r})"
