"""Envelope encryption: AES-256-GCM under a fresh DEK per object, the DEK wrapped by the org's
KEK through a `KeyManager`. See `app.crypto.wire` for the byte layout.

    cipher = EnvelopeCipher(kms)
    blob = cipher.seal(frame_bytes, org_id=org, object_id=frame_id, purpose=Purpose.FRAME)
    frame_bytes = cipher.open(blob, org_id=org, object_id=frame_id, purpose=Purpose.FRAME)

    sealed = cipher.seal_detached(
        frame_bytes, org_id=org, object_id=frame_id, purpose=Purpose.FRAME
    )  # sealed.wrapped_dek and .kek_version to the database, sealed.payload elsewhere
"""

from __future__ import annotations

import logging
import os
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from typing import NamedTuple

from cryptography.exceptions import InvalidTag
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.crypto.errors import DecryptionError
from app.crypto.kms import KeyManager
from app.crypto.wire import (
    BLOB_HEADER_SIZE,
    BLOB_VERSION,
    DEK_SIZE,
    MIN_BLOB_SIZE,
    NONCE_SIZE,
    TAG_SIZE,
    WRAPPED_DEK_SIZE,
    Purpose,
    encode_context,
    kek_version_of,
    payload_aad,
)

log = logging.getLogger(__name__)

# AES-GCM's own limit is 2**36 - 32 bytes; frames and PII are far smaller, so refuse
# absurd sizes early rather than allocate them.
MAX_PLAINTEXT_SIZE = 2**31


@dataclass(frozen=True)
class SealedObject:
    """A sealed object in two parts that are stored apart (what `seal_detached` returns).

    `wrapped_dek` is the 65-byte wrapped DEK (format in `app.crypto.wire`); deleting the stored
    copy crypto-shreds the object. `kek_version` is the KEK version that wrapped it, for the
    caller to store beside it, so that no code outside `app.crypto` parses the wire format.
    `payload` is `nonce || ciphertext || tag`, a bytearray so that a large frame is never
    copied; it is left out of the repr.
    """

    wrapped_dek: bytes
    payload: bytearray = field(repr=False)
    kek_version: int


class EnvelopeCipher:
    """seal/open of objects bound to (org, object id, purpose). Callers never see keys or
    nonces; every failure to open is one `DecryptionError`."""

    def __init__(self, kms: KeyManager) -> None:
        self._kms = kms

    def seal(self, plaintext: bytes, *, org_id: str, object_id: str, purpose: Purpose) -> bytes:
        if len(plaintext) > MAX_PLAINTEXT_SIZE:
            raise ValueError("plaintext too large to seal")
        context = encode_context(org_id, object_id, purpose)
        dek = AESGCM.generate_key(bit_length=256)
        wrapped = self._kms.wrap_dek(org_id, dek, context)
        nonce = os.urandom(NONCE_SIZE)
        body = AESGCM(dek).encrypt(nonce, plaintext, payload_aad(context))
        return b"".join((bytes([BLOB_VERSION]), wrapped, nonce, body))

    def seal_detached(
        self, plaintext: bytes, *, org_id: str, object_id: str, purpose: Purpose
    ) -> SealedObject:
        """`seal`, split as `split_blob` would, for callers that store the wrapped DEK and the
        payload apart (frames: the DEK in the database, the payload in the object store).

        The payload (nonce || ciphertext || tag) is encrypted straight into one buffer, so a
        200 KB frame is neither copied nor allocated twice; `join_blob` rebuilds the blob.
        """
        if len(plaintext) > MAX_PLAINTEXT_SIZE:
            raise ValueError("plaintext too large to seal")
        context = encode_context(org_id, object_id, purpose)
        dek = AESGCM.generate_key(bit_length=256)
        wrapped = self._kms.wrap_dek(org_id, dek, context)
        payload = bytearray(NONCE_SIZE + len(plaintext) + TAG_SIZE)
        payload[:NONCE_SIZE] = os.urandom(NONCE_SIZE)
        AESGCM(dek).encrypt_into(
            bytes(payload[:NONCE_SIZE]),
            plaintext,
            payload_aad(context),
            memoryview(payload)[NONCE_SIZE:],
        )
        return SealedObject(wrapped, payload, kek_version_of(wrapped))

    def open(
        self,
        blob: bytes,
        *,
        org_id: str,
        object_id: str,
        purpose: Purpose,
        wrapped_dek: bytes | None = None,
    ) -> bytes:
        """The plaintext of a sealed blob. ``wrapped_dek``: open it with this wrapped DEK
        instead of the blob's own — the DEK rewrapped under a newer KEK version and stored
        apart, for blobs that must not change (audit details, which the hash chain covers);
        the payload is bound to the DEK, so only a rewrap of the same DEK opens it."""
        try:
            context = encode_context(org_id, object_id, purpose)
        except ValueError:
            raise DecryptionError() from None
        if len(blob) < MIN_BLOB_SIZE or blob[0] != BLOB_VERSION:
            log.warning("refused to open a blob: bad length or version (org=%r)", org_id)
            raise DecryptionError()
        view = memoryview(blob)
        own = bytes(view[1:BLOB_HEADER_SIZE])
        dek = self._kms.unwrap_dek(
            org_id, own if wrapped_dek is None else bytes(wrapped_dek), context
        )
        nonce = bytes(view[BLOB_HEADER_SIZE : BLOB_HEADER_SIZE + NONCE_SIZE])
        try:
            return AESGCM(dek).decrypt(
                nonce, view[BLOB_HEADER_SIZE + NONCE_SIZE :], payload_aad(context)
            )
        except InvalidTag:
            log.warning("refused to open a blob: payload tag check failed (org=%r)", org_id)
            raise DecryptionError() from None

    def rewrap(
        self, blob_or_wrapped_dek: bytes, *, org_id: str, object_id: str, purpose: Purpose
    ) -> bytes:
        """Rewrap the DEK of a sealed blob (or a detached 65-byte wrapped DEK) to the org's
        primary KEK version; returns the same kind of value it was given, unchanged if it is
        already on the primary version. The payload is neither decrypted nor re-encrypted."""
        context = encode_context(org_id, object_id, purpose)
        data = bytes(blob_or_wrapped_dek)
        if len(data) == WRAPPED_DEK_SIZE:
            return self._kms.rewrap_dek(org_id, data, context)
        if len(data) < MIN_BLOB_SIZE or data[0] != BLOB_VERSION:
            raise DecryptionError()
        new = self._kms.rewrap_dek(org_id, data[1:BLOB_HEADER_SIZE], context)
        return data[:1] + new + data[BLOB_HEADER_SIZE:]

    def __repr__(self) -> str:
        return f"EnvelopeCipher(kms={self._kms!r})"


assert DEK_SIZE == 32  # the wire format hard-codes 32-byte DEKs


class RewrapItem(NamedTuple):
    """One stored object to rewrap: `data` is its sealed blob or detached wrapped DEK."""

    object_id: str
    purpose: Purpose
    data: bytes


@dataclass
class RewrapReport:
    total: int = 0
    rewrapped: int = 0
    skipped: int = 0  # already on the primary version
    failed: list[str] = field(default_factory=list)  # object ids that did not unwrap


def rewrap_all(
    kms: KeyManager,
    org_id: str,
    items: Iterable[RewrapItem],
    save: Callable[[RewrapItem, bytes, int], None],
    progress: Callable[[RewrapReport], None] | None = None,
) -> RewrapReport:
    """Rewrap every item to the org's primary KEK version (for `wajah keys rotate`).

    Resumable: items already on the primary version are skipped without unwrapping, so an
    interrupted run is simply run again. `save(item, new_data, kek_version)` persists one item
    and the KEK version that now wraps it (commit as often as you like); `progress(report)` is
    called after each item. Items that fail to unwrap are listed in `report.failed` and left
    untouched; the run goes on.
    """
    cipher = EnvelopeCipher(kms)
    report = RewrapReport()
    primary = kms.primary_version(org_id)
    for item in items:
        report.total += 1
        try:
            version = kek_version_of(item.data)
            if version == primary:
                report.skipped += 1
            else:
                new = cipher.rewrap(
                    item.data, org_id=org_id, object_id=item.object_id, purpose=item.purpose
                )
                # Read from `new`, not `primary`: a wrap limit reached during the run, or
                # another process, can rotate again before this item is rewrapped.
                save(item, new, kek_version_of(new))
                report.rewrapped += 1
        except DecryptionError:
            report.failed.append(item.object_id)
        if progress is not None:
            progress(report)
    return report
