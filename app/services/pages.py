"""One pagination style for every list: `limit` and an opaque string `cursor`.

A cursor is 32 URL-safe base64 characters (RFC 4648 §5, no padding) over 24 bytes: a signed
64-bit big-endian number (the position's microseconds since 1970 UTC, or an audit row's
sequence number) and 16 bytes of the row's id. Any string of that shape names a position, so
a cursor the client altered or made up is no error: it gets the page after that position,
within the caller's own org as always. A string of another shape is 422 `invalid_cursor`.
"""

from __future__ import annotations

import base64
import binascii
import re
import struct
from collections.abc import Callable, Sequence
from datetime import UTC, datetime, timedelta
from typing import TypeVar

from app.errors import InvalidCursorError

CURSOR_PATTERN = "^[A-Za-z0-9_-]{32}$"
_CURSOR = re.compile(CURSOR_PATTERN)
_EPOCH = datetime(1970, 1, 1, tzinfo=UTC)
# Far outside any row's time, yet inside what Python and both databases can hold.
_EARLIEST = datetime(1, 1, 2, tzinfo=UTC)
_LATEST = datetime(9999, 12, 30, tzinfo=UTC)
_ID_BYTES = 16

T = TypeVar("T")


def encode(number: int, row_id: bytes) -> str:
    raw = struct.pack(">q", number) + row_id[:_ID_BYTES].ljust(_ID_BYTES, b"\0")
    return base64.urlsafe_b64encode(raw).decode().rstrip("=")


def decode(cursor: str) -> tuple[int, bytes]:
    if not _CURSOR.fullmatch(cursor):
        raise InvalidCursorError("cursor is not one this API returned")
    try:
        raw = base64.urlsafe_b64decode(cursor)
    except (binascii.Error, ValueError) as exc:  # cannot happen for 32 characters of the set
        raise InvalidCursorError("cursor is not one this API returned") from exc
    (number,) = struct.unpack(">q", raw[:8])
    return number, raw[8:]


def micros(moment: datetime) -> int:
    return (moment - _EPOCH) // timedelta(microseconds=1)


def moment(number: int) -> datetime:
    """The instant `number` microseconds after 1970, held within the years 1..9999."""
    try:
        found = _EPOCH + timedelta(microseconds=number)
    except OverflowError:
        return _EARLIEST if number < 0 else _LATEST
    return min(max(found, _EARLIEST), _LATEST)


# --- positions: (created_at, id) as (number, 16 bytes) -----------------------------------------


def hex_id_position(created_at: datetime, row_id: str) -> tuple[int, bytes]:
    """A row whose id is `<prefix>_<32 hex>` (subjects, watchlists): the id's own 16 bytes,
    which sort as the id's text does."""
    return micros(created_at), bytes.fromhex(row_id.rsplit("_", 1)[1])


def text_id_position(created_at: datetime, row_id: str) -> tuple[int, bytes]:
    """A row whose id is short text (an API key's `[a-z0-9]{1,40}`, 13 as issued)."""
    return micros(created_at), row_id.encode()[:_ID_BYTES].ljust(_ID_BYTES, b"\0")


def after_hex_id(cursor: str, prefix: str) -> tuple[datetime, str]:
    """`(created_at, id)` for a keyset query in the database: the id rebuilt as
    `<prefix>_<32 hex>`, which sorts among real ids as its bytes do."""
    number, raw = decode(cursor)
    return moment(number), f"{prefix}_{raw.hex()}"


def page_of(
    rows: Sequence[T],
    limit: int,
    cursor: str | None,
    position: Callable[[T], tuple[int, bytes]],
) -> tuple[list[T], str | None]:
    """For a short list read whole: the rows after `cursor` in position order, at most
    `limit`, and the next cursor (None on the last page)."""
    ordered = sorted(rows, key=position)
    if cursor is not None:
        after = decode(cursor)
        ordered = [r for r in ordered if position(r) > after]
    page = ordered[:limit]
    return page, (encode(*position(page[-1])) if len(ordered) > limit else None)
