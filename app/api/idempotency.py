"""`Idempotency-Key`: a retried POST gets the first response, not a second enrollment.

The key is reserved (row with no response) in its own transaction before the work starts,
so two concurrent retries cannot both run; the response is stored when the work succeeds.
A failed request releases the key so the client can retry. The same key with a different
request body is refused (`idempotency_key_reused`).
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Awaitable, Callable
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from fastapi import Request
from fastapi.responses import JSONResponse, Response
from sqlalchemy.engine import Connection
from sqlalchemy.exc import IntegrityError
from starlette.concurrency import run_in_threadpool

from app.errors import IdempotencyInFlightError, IdempotencyKeyReusedError, InvalidRequestError
from app.runtime import Runtime
from app.services.principal import Principal
from app.storage.schema import idempotency_keys, utcnow

MAX_KEY_LENGTH = 255
# A reservation still without a response after this long belongs to a request that died
# (killed process, lost connection to the database); a retry may take the key over.
RESERVATION_LEASE = timedelta(seconds=60)


def _abandoned(row: Any) -> bool:
    return row.response_status is None and utcnow() - row.created_at > RESERVATION_LEASE


def release_abandoned_reservations(runtime: Runtime) -> int:
    """At server start: reservations left by requests of a previous process are released.

    Any request in flight before the start died with that process (one server per database;
    with several replicas, the lease above is what releases them).
    """
    with runtime.engine.begin() as conn:
        result = conn.execute(
            sa.delete(idempotency_keys).where(idempotency_keys.c.response_status.is_(None))
        )
    return int(result.rowcount or 0)


def _reserve(runtime: Runtime, org_id: str, key: str, request_hash: bytes) -> Any:
    """Return the stored row for a replay, or None once the key is reserved for us."""
    with runtime.engine.begin() as conn:
        row = conn.execute(
            sa.select(idempotency_keys).where(
                idempotency_keys.c.org_id == org_id, idempotency_keys.c.key == key
            )
        ).first()
        if row is not None and not _abandoned(row):
            return row
        if row is not None:  # its request died with its process: take the key over
            conn.execute(
                sa.delete(idempotency_keys).where(
                    idempotency_keys.c.org_id == org_id, idempotency_keys.c.key == key
                )
            )
        try:
            with conn.begin_nested():
                conn.execute(
                    sa.insert(idempotency_keys).values(
                        org_id=org_id, key=key, request_hash=request_hash, created_at=utcnow()
                    )
                )
        except IntegrityError:
            raise IdempotencyInFlightError(
                "a request with this Idempotency-Key is in flight"
            ) from None
    return None


def encode_body(payload: Any) -> bytes:
    return json.dumps(payload, separators=(",", ":"), default=str).encode()


def store_response(
    conn: Connection, org_id: str, key: str | None, status: int, payload: Any
) -> None:
    """Record the answer to a reserved key in the caller's transaction (no-op without key).

    Services call this inside the transaction of the change itself, so a crash can never
    leave a committed change whose retry would run it a second time.
    """
    if key is None:
        return
    conn.execute(
        sa.update(idempotency_keys)
        .where(idempotency_keys.c.org_id == org_id, idempotency_keys.c.key == key)
        .values(response_status=status, response_body=encode_body(payload))
    )


def _store(runtime: Runtime, org_id: str, key: str, status: int, payload: Any) -> None:
    with runtime.engine.begin() as conn:
        store_response(conn, org_id, key, status, payload)


def _release(runtime: Runtime, org_id: str, key: str) -> None:
    with runtime.engine.begin() as conn:
        conn.execute(
            sa.delete(idempotency_keys).where(
                idempotency_keys.c.org_id == org_id,
                idempotency_keys.c.key == key,
                idempotency_keys.c.response_status.is_(None),
            )
        )


async def idempotent(
    request: Request,
    runtime: Runtime,
    principal: Principal,
    request_fingerprint: bytes,
    run: Callable[[], Awaitable[tuple[int, Any]]],
) -> Response:
    key = request.headers.get("Idempotency-Key")
    if key is None:
        status, payload = await run()
        return JSONResponse(payload, status)
    if not 1 <= len(key) <= MAX_KEY_LENGTH or not key.isprintable():
        raise InvalidRequestError(
            f"Idempotency-Key must be 1..{MAX_KEY_LENGTH} printable characters"
        )
    request_hash = hashlib.sha256(
        request.method.encode() + b" " + request.url.path.encode() + b"\0" + request_fingerprint
    ).digest()
    row = await run_in_threadpool(_reserve, runtime, principal.org_id, key, request_hash)
    if row is not None:
        if bytes(row.request_hash) != request_hash:
            raise IdempotencyKeyReusedError(
                "this Idempotency-Key was used with a different request"
            )
        if row.response_status is None:
            raise IdempotencyInFlightError("a request with this Idempotency-Key is in flight")
        return Response(
            bytes(row.response_body),
            int(row.response_status),
            media_type="application/json",
            headers={"Idempotent-Replayed": "true"},
        )
    try:
        status, payload = await run()
    except BaseException:
        await run_in_threadpool(_release, runtime, principal.org_id, key)
        raise
    # The final answer (it may hold more than what the change's transaction stored).
    await run_in_threadpool(_store, runtime, principal.org_id, key, status, payload)
    return Response(encode_body(payload), status, media_type="application/json")
