"""No key material in logs, exceptions, reprs or stored state (scanned as raw, hex, base64)."""

from __future__ import annotations

import base64
import logging
from pathlib import Path

import pytest
from cryptography.hazmat.primitives.ciphers.aead import AESGCM

from app.crypto import (
    DecryptionError,
    EnvelopeCipher,
    KeyManager,
    KeyringStore,
    LocalKeyring,
    Purpose,
    ReferenceHasher,
    RootKey,
)
from app.crypto.keyring_store import encode_state
from app.crypto.kms import _KEK_AAD
from app.crypto.wire import encode_context, split_blob

from .conftest import TEST_ROOT_KEY


def _forms(secret: bytes) -> list[bytes]:
    return [
        secret,
        secret.hex().encode(),
        base64.b64encode(secret),
        base64.urlsafe_b64encode(secret),
        repr(secret).encode(),
    ]


def _assert_absent(haystack: bytes, secrets: list[bytes]) -> None:
    for secret in secrets:
        for form in _forms(secret):
            assert form not in haystack


def test_no_key_material_anywhere(
    kms: KeyManager,
    keyring_store: KeyringStore,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.DEBUG)
    kms.create_org("org-a")
    kms.rotate("org-a")
    cipher = EnvelopeCipher(kms)
    hasher = ReferenceHasher(kms)
    secrets: list[bytes] = [TEST_ROOT_KEY]
    texts: list[str] = [repr(kms), repr(cipher), repr(hasher)]
    blobs: list[bytes] = []
    for i in range(20):
        obj = f"o{i}"
        blob = cipher.seal(b"nik-%d" % i, org_id="org-a", object_id=obj, purpose=Purpose.PII_NIK)
        blobs.append(blob)
        ctx = encode_context("org-a", obj, Purpose.PII_NIK)
        secrets.append(kms.unwrap_dek("org-a", split_blob(blob)[0], ctx))  # the DEKs
        try:
            cipher.open(blob[:-1], org_id="org-a", object_id=obj, purpose=Purpose.PII_NIK)
        except DecryptionError as exc:
            texts += [str(exc), repr(exc), repr(exc.__context__), repr(exc.__cause__)]
    hasher.reference(org_id="org-a", model_id="m", enrollment_id="e", vector=b"\x00" * 16)
    state = keyring_store.load()
    assert state is not None
    if isinstance(kms, LocalKeyring):  # recover the KEKs to look for them too
        root = AESGCM(TEST_ROOT_KEY)
        for version, rec in state["orgs"]["org-a"]["versions"].items():
            raw = base64.b64decode(rec["key"]["wrapped"])
            aad = kms._kek_aad(_KEK_AAD, "org-a", int(version))
            secrets.append(root.decrypt(raw[:12], raw[12:], aad))
    texts += [r.getMessage() for r in caplog.records]
    # The document as stored (file or database row), and any file the store keeps beside it.
    files = [p for p in (tmp_path / "keys").glob("*") if p.is_file()]
    stored = b"".join([encode_state(state).encode(), *(p.read_bytes() for p in files)])
    haystack = b"\n".join([*(t.encode() for t in texts), stored, *blobs])
    assert len(secrets) == 21 + (2 if isinstance(kms, LocalKeyring) else 0)
    _assert_absent(haystack, secrets)
    assert "refused to unwrap" not in caplog.text  # payload failures are logged separately
    assert "payload tag check failed" in caplog.text
    assert (
        repr(RootKey(TEST_ROOT_KEY, source="test"))
        == "RootKey(source='test', auto_generated=False)"
    )
