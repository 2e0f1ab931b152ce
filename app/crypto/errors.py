"""Errors of the crypto package.

Every failure to open something is one opaque `DecryptionError`: callers (and attackers) learn
only that it failed; the reason goes to the log, never key material.
"""

from __future__ import annotations


class CryptoError(Exception):
    """Base of every error raised by `app.crypto`."""


class DecryptionError(CryptoError):
    """A blob or wrapped key could not be opened (tampered, wrong context, unknown or
    disabled or destroyed key, truncated). Deliberately carries no detail."""

    def __init__(self) -> None:
        super().__init__("decryption failed")


class KeyringError(CryptoError):
    """The key manager is misconfigured or its state is unusable."""


class RootKeyError(KeyringError):
    """The root key of the local keyring is missing, malformed or unsafe for this mode."""


class OrgKeyNotFoundError(KeyringError):
    """Sealing for an org that has no key-encryption key (create it first)."""


class KeyStateError(KeyringError):
    """An operation is not allowed in the current state of an org's keys
    (e.g. destroying the primary version, disabling beyond the primary)."""


class InvalidApiKeyError(CryptoError):
    """A presented API key is not acceptable. `reason` is for logs and metrics only; the
    client must always get the same 'invalid API key' answer."""

    def __init__(self, reason: str) -> None:
        super().__init__("invalid API key")
        self.reason = reason
