"""API keys: `wjh_<env>_<key id>_<secret>`.

The visible prefix and key id let secret scanners and operators recognise a leaked key; the
secret is 256 random bits (base32, 52 chars). Only SHA-256 of the secret is stored; a request
is looked up by key id and the digest compared in constant time. Every rejection — malformed,
unknown id, wrong secret, expired, revoked, other org — is one `InvalidApiKeyError` whose
public message is identical; `.reason` is for logs and metrics.
"""

from __future__ import annotations

import base64
import hashlib
import hmac
import re
import secrets
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from datetime import datetime
from enum import StrEnum

from app.crypto.errors import InvalidApiKeyError

KEY_PREFIX = "wjh"
ENVIRONMENTS = ("live", "test")
KEY_ID_BYTES = 8  # 13 base32 chars; an identifier, not a secret
SECRET_BYTES = 32  # 256 bits, 52 base32 chars
_KEY_RE = re.compile(r"wjh_(live|test)_([a-z2-7]{13})_([a-z2-7]{52})")
# compared against when the key id is unknown, so unknown ids cost the same as wrong secrets
_DUMMY_HASH = hashlib.sha256(b"wajah: no such key").digest()


class Scope(StrEnum):
    ENROLL = "enroll"
    MATCH = "match"
    WATCHLIST = "watchlist"
    ADMIN = "admin"


def _b32(raw: bytes) -> str:
    return base64.b32encode(raw).decode("ascii").rstrip("=").lower()


def hash_api_key_secret(secret: str) -> bytes:
    """SHA-256 of the secret part: what the database stores (32 bytes)."""
    return hashlib.sha256(secret.encode("ascii")).digest()


@dataclass(frozen=True)
class GeneratedApiKey:
    """Show `plaintext` to the user once; store `key_id` and `secret_hash`."""

    plaintext: str = field(repr=False)
    key_id: str
    secret_hash: bytes = field(repr=False)

    def __iter__(self) -> Iterator[str | bytes]:
        return iter((self.plaintext, self.key_id, self.secret_hash))


def generate_api_key(environment: str = "live") -> GeneratedApiKey:
    if environment not in ENVIRONMENTS:
        raise ValueError(f"environment must be one of {ENVIRONMENTS}")
    key_id = _b32(secrets.token_bytes(KEY_ID_BYTES))
    secret = _b32(secrets.token_bytes(SECRET_BYTES))
    plaintext = f"{KEY_PREFIX}_{environment}_{key_id}_{secret}"
    return GeneratedApiKey(plaintext, key_id, hash_api_key_secret(secret))


@dataclass(frozen=True)
class ParsedApiKey:
    environment: str
    key_id: str
    secret: str = field(repr=False)


def parse_api_key(presented: str) -> ParsedApiKey:
    """Split a presented key; raises `InvalidApiKeyError(reason="malformed")`."""
    match = _KEY_RE.fullmatch(presented) if isinstance(presented, str) else None
    if match is None:
        raise InvalidApiKeyError("malformed")
    return ParsedApiKey(match[1], match[2], match[3])


def verify_api_key_secret(secret: str, secret_hash: bytes) -> bool:
    # Prevent timing attacks: compare fixed-size digests in constant time, never the secrets
    return hmac.compare_digest(hash_api_key_secret(secret), secret_hash)


@dataclass(frozen=True)
class StoredApiKey:
    """What the database layer returns for a key id."""

    key_id: str
    org_id: str
    secret_hash: bytes = field(repr=False)
    scopes: frozenset[Scope]
    environment: str = "live"
    expires_at: datetime | None = None
    revoked_at: datetime | None = None


def authenticate_api_key(
    presented: str,
    lookup: Callable[[str], StoredApiKey | None],
    *,
    now: datetime,
    org_id: str | None = None,
    scope: Scope | None = None,
) -> StoredApiKey:
    """Return the stored key that `presented` proves, or raise `InvalidApiKeyError`.

    `lookup(key_id)` is the DB read; `org_id`, if given, is the org the request is about;
    `scope` the scope it needs. Hashing and comparison happen on every path that has a
    well-formed key, so wrong-id and wrong-secret rejections take the same time. Recording
    last-used time is the caller's job (on success).
    """
    try:
        parsed = parse_api_key(presented)
    except InvalidApiKeyError:
        verify_api_key_secret("x" * 52, _DUMMY_HASH)
        raise
    stored = lookup(parsed.key_id)
    ok = verify_api_key_secret(parsed.secret, stored.secret_hash if stored else _DUMMY_HASH)
    if stored is None:
        raise InvalidApiKeyError("unknown_key_id")
    if not ok:
        raise InvalidApiKeyError("secret_mismatch")
    if stored.environment != parsed.environment:
        raise InvalidApiKeyError("wrong_environment")
    if stored.revoked_at is not None and stored.revoked_at <= now:
        raise InvalidApiKeyError("revoked")
    if stored.expires_at is not None and stored.expires_at <= now:
        raise InvalidApiKeyError("expired")
    if org_id is not None and stored.org_id != org_id:
        raise InvalidApiKeyError("other_org")
    if scope is not None and scope not in stored.scopes and Scope.ADMIN not in stored.scopes:
        raise InvalidApiKeyError("missing_scope")
    return stored
