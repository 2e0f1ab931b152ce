"""The audit log's keys: one to chain rows, one to sign checkpoints.

Both are derived from the key manager's audit key (`KeyManager.audit_mac`), which the local
keyring derives from the root key and the PKCS#11 backend holds in the token::

    chain key    = audit_mac(b"wajah/audit/chain-key/v2")          HMAC-SHA-256 key, 32 bytes
    signing seed = audit_mac(b"wajah/audit/checkpoint-ed25519/v1")  Ed25519 private key seed

They are derived once per process and kept in memory, as the local keyring keeps unwrapped
KEKs: an audit append then costs an HMAC in software rather than a round trip to the HSM,
while what they come from stays where write access to the database cannot reach it. The
checkpoint's public key is therefore a fixed property of the deployment's keys: publish it
(`wajah audit public-key`) so that anyone can check a checkpoint's signature.
"""

from __future__ import annotations

import hashlib
import hmac
import threading

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric.ed25519 import Ed25519PrivateKey, Ed25519PublicKey

from app.crypto.kms import KeyManager

_CHAIN_KEY_LABEL = b"wajah/audit/chain-key/v2"
_SIGNING_SEED_LABEL = b"wajah/audit/checkpoint-ed25519/v1"
PUBLIC_KEY_SIZE = 32
SIGNATURE_SIZE = 64


class AuditKey:
    """Keyed hashing of audit rows and signing of checkpoints; never exposes a key."""

    def __init__(self, kms: KeyManager) -> None:
        self._kms = kms
        self._lock = threading.Lock()
        self._chain_key: bytes | None = None
        self._signing: Ed25519PrivateKey | None = None

    def _derive(self) -> tuple[bytes, Ed25519PrivateKey]:
        with self._lock:
            if self._chain_key is None or self._signing is None:
                self._chain_key = self._kms.audit_mac(_CHAIN_KEY_LABEL)
                seed = self._kms.audit_mac(_SIGNING_SEED_LABEL)
                self._signing = Ed25519PrivateKey.from_private_bytes(seed)
            return self._chain_key, self._signing

    def mac(self, message: bytes) -> bytes:
        """HMAC-SHA-256 of ``message`` under the chain key (32 bytes)."""
        chain_key = self._chain_key or self._derive()[0]
        return hmac.digest(chain_key, message, hashlib.sha256)

    def public_key(self) -> bytes:
        """The raw 32-byte Ed25519 public key that checkpoints are signed with."""
        return (
            self._derive()[1]
            .public_key()
            .public_bytes(serialization.Encoding.Raw, serialization.PublicFormat.Raw)
        )

    def sign(self, message: bytes) -> bytes:
        """An Ed25519 signature of ``message`` (64 bytes)."""
        return self._derive()[1].sign(message)

    def __repr__(self) -> str:
        return f"AuditKey(kms={self._kms!r})"


def signature_valid(public_key: bytes, message: bytes, signature: bytes) -> bool:
    """True iff ``signature`` is ``public_key``'s Ed25519 signature of ``message``; False
    (never an exception) for malformed keys or signatures."""
    if len(public_key) != PUBLIC_KEY_SIZE or len(signature) != SIGNATURE_SIZE:
        return False
    try:
        Ed25519PublicKey.from_public_bytes(public_key).verify(signature, message)
    except (InvalidSignature, ValueError):
        return False
    return True
