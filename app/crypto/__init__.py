"""All cryptography of wajah: envelope encryption, key managers, API keys, hashed references.

The package exposes seal/open and hash/verify operations, never keys. This module is the
surface for the rest of the service; wire-format internals (`app.crypto.wire`) and the
building blocks of API-key checks (`app.crypto.apikeys`) are for this package and its tests.
"""

from app.crypto.apikeys import (
    GeneratedApiKey,
    Scope,
    StoredApiKey,
    authenticate_api_key,
    generate_api_key,
)
from app.crypto.audit import AuditKey, signature_valid
from app.crypto.envelope import (
    EnvelopeCipher,
    RewrapItem,
    RewrapReport,
    SealedObject,
    rewrap_all,
)
from app.crypto.errors import (
    CryptoError,
    DecryptionError,
    InvalidApiKeyError,
    KeyringError,
    KeyStateError,
    OrgKeyNotFoundError,
    RootKeyError,
)
from app.crypto.factory import build_kms
from app.crypto.keyring_store import FileKeyringStore, KeyringStore
from app.crypto.kms import KekState, KekVersionInfo, KeyManager, LocalKeyring
from app.crypto.references import ReferenceHasher
from app.crypto.rootkey import RootKey, generate_root_key_b64, load_root_key
from app.crypto.wire import Purpose

__all__ = [
    "AuditKey",
    "CryptoError",
    "DecryptionError",
    "EnvelopeCipher",
    "FileKeyringStore",
    "GeneratedApiKey",
    "InvalidApiKeyError",
    "KekState",
    "KekVersionInfo",
    "KeyManager",
    "KeyStateError",
    "KeyringError",
    "KeyringStore",
    "LocalKeyring",
    "OrgKeyNotFoundError",
    "Purpose",
    "ReferenceHasher",
    "RewrapItem",
    "RewrapReport",
    "RootKey",
    "RootKeyError",
    "Scope",
    "SealedObject",
    "StoredApiKey",
    "authenticate_api_key",
    "build_kms",
    "generate_api_key",
    "generate_root_key_b64",
    "load_root_key",
    "rewrap_all",
    "signature_valid",
]
