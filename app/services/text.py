"""Free text from callers (names, reasons, notes, ids): only what every store and every reader
can take.

PostgreSQL refuses a NUL byte in text with an error, and a lone surrogate (which JSON's
`\\ud800` escape can produce) cannot be encoded as UTF-8 at all; other control characters
are stored but turn logs, CSV exports and terminals into an attack surface. So free text
holds no control characters (Unicode category Cc: C0, DEL, C1) and no surrogates, checked
once here for the service and the command line, and by `app.api.schemas.Text` before a
request body reaches a service.
"""

from __future__ import annotations

import re

from app.errors import InvalidRequestError

_REFUSED = re.compile("[\x00-\x1f\x7f-\x9f\ud800-\udfff]")
#: The same rule as a JSON Schema pattern, for generated clients and fuzzers (a schema cannot
#: name lone surrogates; the server refuses them all the same).
JSON_SCHEMA_PATTERN = "^[^\\u0000-\\u001f\\u007f-\\u009f]*$"
MESSAGE = "must not contain control characters (such as NUL) or lone surrogates"
# Ids the service generates (`enr_<hex>`, `org_<hex>` ...). Anything else cannot exist, and
# must not reach the database either: PostgreSQL answers a NUL byte with an error, not "none".
SERVICE_ID = re.compile(r"[A-Za-z0-9_]{1,40}")


def is_clean(value: str) -> bool:
    return _REFUSED.search(value) is None


def check_text(value: str, what: str) -> str:
    """`value` unchanged, or `InvalidRequestError` naming `what` (never echoing the value)."""
    if not is_clean(value):
        raise InvalidRequestError(f"{what} {MESSAGE}")
    return value
