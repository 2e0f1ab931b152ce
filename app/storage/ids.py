"""Application-generated identifiers.

Ids are made by the app, not the database, so a row's id is known before its INSERT (the
audit row that records a change names the new row in the same transaction) and never leaks
insertion order or row counts the way an autoincrement would.
"""

from __future__ import annotations

import re
import secrets

_PREFIX = re.compile(r"^[a-z][a-z0-9]{0,7}$")


def new_id(prefix: str) -> str:
    """Return ``"{prefix}_{32 hex}"``: 128 random bits, e.g. ``enr_3f9a...``.

    The prefix says what the id names (``org``, ``key``, ``sub``, ``enr``, ``frm``, ``aud``),
    which makes logs and support tickets readable and a wrong-kind id easy to reject.
    """
    if not _PREFIX.fullmatch(prefix):
        raise ValueError(f"id prefix must be 1-8 lowercase letters/digits, got {prefix!r}")
    return f"{prefix}_{secrets.token_hex(16)}"
