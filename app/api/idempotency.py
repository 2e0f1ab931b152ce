"""The `Idempotency-Key` header of a route: reserve, run, answer (see
`app.services.idempotency` for the rules)."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from typing import Any

from fastapi import Request
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel
from starlette.concurrency import run_in_threadpool

from app.runtime import Runtime
from app.services import idempotency
from app.services.principal import Principal


async def idempotent(
    request: Request,
    runtime: Runtime,
    principal: Principal,
    key: str | None,
    request_fingerprint: bytes,
    run: Callable[[str | None], Awaitable[tuple[int, Any]]],
    response_model: type[BaseModel],
    kept: Callable[[Any], Any] | None = None,
) -> Response:
    """Run `run(key)` once per `Idempotency-Key` (`key`, the header the route declares); a
    retry gets the first answer, rendered through `response_model` (an answer stored inside
    the change's transaction holds the service's result, which the model renders as the
    route does). `kept(payload)`: what is stored for a replay, when it must hold less than
    the answer (a secret shown once is not stored in the clear)."""
    if key is None:
        status, payload = await run(None)
        return JSONResponse(payload, status)
    idempotency.check_key(key)
    hashed = idempotency.request_hash(request.method, request.url.path, request_fingerprint)
    stored = await run_in_threadpool(idempotency.reserve, runtime, principal.org_id, key, hashed)
    if stored is not None:
        replayed = response_model.model_validate_json(stored.body).model_dump(mode="json")
        return Response(
            idempotency.encode_answer(replayed),
            stored.status,
            media_type="application/json",
            headers={"Idempotent-Replayed": "true"},
        )
    try:
        status, payload = await run(key)
    except BaseException:
        await run_in_threadpool(idempotency.release, runtime, principal.org_id, key)
        raise
    stored_payload = payload if kept is None else kept(payload)
    await run_in_threadpool(
        idempotency.answer, runtime, principal.org_id, key, status, stored_payload
    )
    return Response(idempotency.encode_answer(payload), status, media_type="application/json")
