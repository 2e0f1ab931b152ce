"""Wire formats of sealed objects and wrapped data keys, and their associated data.

All integers are big-endian. Every parser checks lengths and version bytes before slicing and
raises `DecryptionError` on anything unexpected.

Wrapped DEK, format 1 (exactly 65 bytes; stored next to the payload or inside a sealed blob)::

    offset  size  field
    0       1     0x01  wrapped-DEK format version
    1       4     KEK version (u32, >= 1) that wrapped this DEK
    5       12    wrap nonce (random, 96 bit)
    17      32    AES-256-GCM ciphertext of the 32-byte DEK
    49      16    GCM tag

    associated data = b"wajah/dek/v1\\0" || lp(org_id) || u32(KEK version) || context

Sealed blob, format 1 (what `EnvelopeCipher.seal` returns; at least 94 bytes)::

    offset  size  field
    0       1     0x01  sealed-blob format version
    1       65    wrapped DEK (above)
    66      12    payload nonce (random, 96 bit)
    78      n     AES-256-GCM ciphertext of the plaintext
    78+n    16    GCM tag

    associated data = b"wajah/payload/v1\\0" || context

    context = lp(org_id) || lp(object_id) || lp(purpose)     lp(s) = u16(len(utf8(s))) || utf8(s)

The payload's associated data deliberately omits the KEK version: rotation rewraps only the
65-byte DEK and never touches the payload. The KEK version is bound where it is used, in the
wrapped DEK's associated data, and the payload is bound to its DEK, which is fresh per object.
The 65 bytes after the version byte can be stored apart from the rest (`split_blob`), so
deleting a stored wrapped DEK crypto-shreds its object.
"""

from __future__ import annotations

import struct
from enum import StrEnum
from typing import NamedTuple

from app.crypto.errors import DecryptionError

DEK_SIZE = 32
NONCE_SIZE = 12
TAG_SIZE = 16
MAX_ID_BYTES = 256

WRAPPED_DEK_VERSION = 0x01
WRAPPED_DEK_SIZE = 1 + 4 + NONCE_SIZE + DEK_SIZE + TAG_SIZE  # 65
BLOB_VERSION = 0x01
BLOB_HEADER_SIZE = 1 + WRAPPED_DEK_SIZE  # 66
MIN_BLOB_SIZE = BLOB_HEADER_SIZE + NONCE_SIZE + TAG_SIZE  # 94
MAX_KEK_VERSION = 2**32 - 1

_DEK_AAD_PREFIX = b"wajah/dek/v1\x00"
_PAYLOAD_AAD_PREFIX = b"wajah/payload/v1\x00"
_U32 = struct.Struct(">I")
_U16 = struct.Struct(">H")


class Purpose(StrEnum):
    """What a sealed object is. Bound into the associated data, so a blob sealed for one
    purpose never opens as another (a sealed NIK cannot be replayed as a webhook secret)."""

    FRAME = "frame"
    PII_NIK = "pii_nik"
    PII_EMAIL = "pii_email"
    PII_PHONE = "pii_phone"
    PII_NAME = "pii_name"
    WEBHOOK_SECRET = "webhook_secret"
    AUDIT_DETAIL = "audit_detail"


def lp(value: str, what: str) -> bytes:
    """Length-prefixed UTF-8; refuses empty or oversized identifiers."""
    raw = value.encode("utf-8")
    if not 1 <= len(raw) <= MAX_ID_BYTES:
        raise ValueError(f"{what} must be 1..{MAX_ID_BYTES} UTF-8 bytes")
    return _U16.pack(len(raw)) + raw


def encode_context(org_id: str, object_id: str, purpose: Purpose) -> bytes:
    return lp(org_id, "org_id") + lp(object_id, "object_id") + lp(Purpose(purpose).value, "purpose")


def dek_aad(org_id: str, kek_version: int, context: bytes) -> bytes:
    return _DEK_AAD_PREFIX + lp(org_id, "org_id") + _U32.pack(kek_version) + context


def payload_aad(context: bytes) -> bytes:
    return _PAYLOAD_AAD_PREFIX + context


class WrappedDek(NamedTuple):
    kek_version: int
    nonce: bytes
    ciphertext: bytes  # encrypted DEK || tag

    def to_bytes(self) -> bytes:
        return (
            bytes([WRAPPED_DEK_VERSION])
            + _U32.pack(self.kek_version)
            + self.nonce
            + self.ciphertext
        )


def parse_wrapped_dek(data: bytes) -> WrappedDek:
    if len(data) != WRAPPED_DEK_SIZE or data[0] != WRAPPED_DEK_VERSION:
        raise DecryptionError()
    (version,) = _U32.unpack_from(data, 1)
    if version < 1:
        raise DecryptionError()
    return WrappedDek(version, bytes(data[5:17]), bytes(data[17:]))


def kek_version_of(data: bytes) -> int:
    """KEK version of a sealed blob or a wrapped DEK, read without decrypting anything."""
    return parse_wrapped_dek(_wrapped_part(data)).kek_version


def _wrapped_part(data: bytes) -> bytes:
    if len(data) == WRAPPED_DEK_SIZE:
        return data
    if len(data) < MIN_BLOB_SIZE or data[0] != BLOB_VERSION:
        raise DecryptionError()
    return data[1:BLOB_HEADER_SIZE]


def split_blob(blob: bytes) -> tuple[bytes, bytes]:
    """Split a sealed blob into (wrapped DEK, payload) so they can be stored apart; `join_blob`
    reverses it. The payload is `nonce || ciphertext || tag`."""
    if len(blob) < MIN_BLOB_SIZE or blob[0] != BLOB_VERSION:
        raise DecryptionError()
    return bytes(blob[1:BLOB_HEADER_SIZE]), bytes(blob[BLOB_HEADER_SIZE:])


def join_blob(wrapped_dek: bytes, payload: bytes) -> bytes:
    parse_wrapped_dek(wrapped_dek)
    if len(payload) < NONCE_SIZE + TAG_SIZE:
        raise DecryptionError()
    return bytes([BLOB_VERSION]) + wrapped_dek + payload
