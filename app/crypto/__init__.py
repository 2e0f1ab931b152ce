"""All cryptography of wajah: envelope encryption, key managers, API keys, hashed references.

The package exposes seal/open and hash/verify operations, never keys.
"""

from app.crypto.apikeys import (
    GeneratedApiKey,
    ParsedApiKey,
    Scope,
    StoredApiKey,
    authenticate_api_key,
    generate_api_key,
    hash_api_key_secret,
    parse_api_key,
    verify_api_key_secret,
)
from app.crypto.envelope import EnvelopeCipher, RewrapItem, RewrapReport, rewrap_all
from app.crypto.errors import (
    CryptoError,
    DecryptionError,
    InvalidApiKeyError,
    KeyringError,
    KeyStateError,
    OrgKeyNotFoundError,
    RootKeyError,
)
from app.crypto.kms import KekState, KekVersionInfo, KeyManager, LocalKeyring, build_kms
from app.crypto.references import ReferenceHasher
from app.crypto.rootkey import RootKey, generate_root_key_b64, load_root_key
from app.crypto.wire import Purpose, join_blob, kek_version_of, split_blob

__all__ = [
    "CryptoError",
    "DecryptionError",
    "EnvelopeCipher",
    "GeneratedApiKey",
    "InvalidApiKeyError",
    "KekState",
    "KekVersionInfo",
    "KeyManager",
    "KeyStateError",
    "KeyringError",
    "LocalKeyring",
    "OrgKeyNotFoundError",
    "ParsedApiKey",
    "Purpose",
    "ReferenceHasher",
    "RewrapItem",
    "RewrapReport",
    "RootKey",
    "RootKeyError",
    "Scope",
    "StoredApiKey",
    "authenticate_api_key",
    "build_kms",
    "generate_api_key",
    "generate_root_key_b64",
    "hash_api_key_secret",
    "join_blob",
    "kek_version_of",
    "load_root_key",
    "parse_api_key",
    "rewrap_all",
    "split_blob",
    "verify_api_key_secret",
]
