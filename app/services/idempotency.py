"""`Idempotency-Key`: a retried request gets the first answer, not a second change.

The key is reserved (a record with no answer) in its own transaction before the work starts,
so two concurrent retries cannot both run; the service that makes the change stores the
answer in the change's own transaction (`store_answer`), and the caller stores the final
answer once the request is done (it may hold more, e.g. watchlist hits found after the
commit). A failed request releases the key so the client can retry. The same key with a
different request is refused (`idempotency_key_reused`).
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

from app.errors import IdempotencyInFlightError, IdempotencyKeyReusedError, InvalidRequestError
from app.runtime import Runtime
from app.storage import Connection, idempotency, utcnow, write_transaction

MAX_KEY_LENGTH = 255
# A reservation still without an answer after this long belongs to a request that died
# (killed process, lost connection to the database); a retry may take the key over.
RESERVATION_LEASE = timedelta(seconds=60)


@dataclass(frozen=True)
class StoredAnswer:
    """The first request's answer, to replay: its status and JSON body."""

    status: int
    body: bytes


def check_key(key: str) -> str:
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidRequestError(
            f"Idempotency-Key must be 1..{MAX_KEY_LENGTH} printable characters"
        )
    return key


def request_hash(method: str, path: str, fingerprint: bytes) -> bytes:
    """What a retry must repeat exactly: the method, the path and the body's fingerprint."""
    return hashlib.sha256(method.encode() + b" " + path.encode() + b"\0" + fingerprint).digest()


def encode_answer(payload: Any) -> bytes:
    if dataclasses.is_dataclass(payload) and not isinstance(payload, type):
        payload = dataclasses.asdict(payload)
    return json.dumps(payload, separators=(",", ":"), default=str).encode()


def reserve(runtime: Runtime, org_id: str, key: str, hashed_request: bytes) -> StoredAnswer | None:
    """Reserve the key for this request (None), or return the answer a retry gets.

    Refuses a key in use by a different request, or by one still in flight.
    """
    with write_transaction(runtime.engine) as conn:
        row = idempotency.find(conn, org_id, key)
        if row is not None and not _abandoned(row):
            return _replay(row, hashed_request)
        if row is not None:  # its request died with its process: take the key over
            idempotency.delete(conn, org_id, key)
        if not idempotency.reserve(conn, org_id, key, hashed_request, runtime.replica_id):
            raise IdempotencyInFlightError("a request with this Idempotency-Key is in flight")
    return None


def _abandoned(row: Any) -> bool:
    return row.response_status is None and utcnow() - row.created_at > RESERVATION_LEASE


def _replay(row: Any, hashed_request: bytes) -> StoredAnswer:
    if bytes(row.request_hash) != hashed_request:
        raise IdempotencyKeyReusedError("this Idempotency-Key was used with a different request")
    if row.response_status is None:
        raise IdempotencyInFlightError("a request with this Idempotency-Key is in flight")
    return StoredAnswer(int(row.response_status), bytes(row.response_body))


def store_answer(
    conn: Connection,
    org_id: str,
    key: str,
    status: int,
    payload: Any,
    subject_id: str | None = None,
) -> None:
    """Record the answer to a reserved key in the caller's transaction (the change's own).

    ``subject_id``: the subject the answer is about; erasing it deletes the record, so a
    replay runs again and meets the erasure instead of the old answer."""
    idempotency.store_response(conn, org_id, key, status, encode_answer(payload), subject_id)


def answer(runtime: Runtime, org_id: str, key: str, status: int, payload: Any) -> None:
    """Record the final answer to a reserved key."""
    with write_transaction(runtime.engine) as conn:
        store_answer(conn, org_id, key, status, payload)


def release(runtime: Runtime, org_id: str, key: str) -> None:
    """The request failed: the key is free again for the client's retry."""
    with write_transaction(runtime.engine) as conn:
        idempotency.release(conn, org_id, key)


def release_abandoned_reservations(runtime: Runtime) -> int:
    """At server start: reservations left by requests of a previous process are released.

    With SQLite (one server) any request in flight before the start died with that process.
    With PostgreSQL other replicas' requests may be in flight: only this replica's own (it
    restarted on the same home, so they died with it) and those older than the lease.
    """
    if not runtime.feed.required:
        owner, before = None, None
    else:
        owner, before = runtime.replica_id, utcnow() - RESERVATION_LEASE
    with write_transaction(runtime.engine) as conn:
        return idempotency.release_unanswered(conn, owner, before)
