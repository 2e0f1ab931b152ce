"""Pseudonyms for ids that must not appear in logs as they are (subject ids may be NIKs).

HMAC-SHA-256 under a key made at random for each process and never written anywhere: one
subject gets the same pseudonym in every log line of one process, so its requests can be
followed, but nobody can confirm a guessed id against a log line (a plain hash of a
16-digit NIK is reversed by trying them all).
"""

from __future__ import annotations

import hashlib
import hmac
import secrets


class Pseudonymizer:
    def __init__(self) -> None:
        self._key = secrets.token_bytes(32)

    def __call__(self, value: str) -> str:
        digest = hmac.new(self._key, value.encode("utf-8", "surrogatepass"), hashlib.sha256)
        return f"h:{digest.hexdigest()[:16]}"
