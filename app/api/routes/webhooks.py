"""Webhook endpoints of the org (admin scope): create (the secret shown once), list, read,
change, delete, rotate the secret. Another org's webhook ids are 404 like missing ones."""

from __future__ import annotations

import functools
import json
from collections.abc import Callable
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Path, Request
from fastapi.responses import Response
from starlette.concurrency import run_in_threadpool

from app.api.contract import Codes, Cursor, IdempotencyKey, JsonBodyRoute, Limit, errors
from app.api.deps import AdminDep
from app.api.idempotency import idempotent
from app.api.webhook_schemas import (
    SecretRotation,
    Webhook,
    WebhookCreate,
    WebhookDeleted,
    WebhookPage,
    WebhookPatch,
    WebhookWithSecret,
)
from app.services import webhooks as service

router = APIRouter(tags=["webhooks"], route_class=JsonBodyRoute)

WebhookId = Annotated[str, Path(examples=["wh_3f9a0c2e1d4b4a6f8e9c7b1a2d3e4f50"])]
NOT_FOUND: Codes = {404: ("webhook_not_found",)}
# What a URL or an event list may be refused for.
TARGET: Codes = {
    422: ("invalid_webhook_url", "webhook_destination_forbidden", "unknown_event_type"),
}
IDEMPOTENT: Codes = {409: ("idempotency_request_in_flight",), 422: ("idempotency_key_reused",)}


async def _idempotent_secret(
    request: Request,
    caller: AdminDep,
    idempotency_key: str | None,
    fingerprint_of: Any,
    work: Callable[..., dict[str, Any]],
    status: int,
    *args: Any,
) -> Response:
    """Run `work` once per `Idempotency-Key`; a replay answers with the secret null (it is
    shown once and never stored in the clear, the idempotency record included)."""
    runtime, principal = caller.runtime, await caller.principal()
    # Keyed: the URL may carry the receiver's token.
    fingerprint = runtime.kms.mac(
        principal.org_id, json.dumps(fingerprint_of, sort_keys=True, default=str).encode()
    )

    async def run(key: str | None) -> tuple[int, Any]:
        answer = await run_in_threadpool(
            functools.partial(work, runtime, principal, *args, idempotency_key=key)
        )
        return status, WebhookWithSecret.model_validate(answer).model_dump(mode="json")

    return await idempotent(
        request,
        runtime,
        principal,
        idempotency_key,
        fingerprint,
        run,
        WebhookWithSecret,
        kept=service.without_secret,
    )


@router.post(
    "/v1/webhooks",
    status_code=201,
    response_model=WebhookWithSecret,
    responses=errors(TARGET, IDEMPOTENT, {409: ("webhook_limit_reached",)}, body=True),
    summary="Create a webhook endpoint (its signing secret is shown once)",
)
async def create_webhook(
    body: WebhookCreate,
    request: Request,
    caller: AdminDep,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """Deliveries of the listed event types start at once, signed per Standard Webhooks 1.0
    with the `whsec_…` secret in this answer, which is sealed under the org KEK and never
    shown again. At most 20 endpoints per org (409 `webhook_limit_reached`). Audited with the
    endpoint id and host (never the path or query). Retry-safe with `Idempotency-Key` (a
    replay answers the endpoint with `secret` null)."""
    values = body.model_dump()
    return await _idempotent_secret(
        request,
        caller,
        idempotency_key,
        ["create", values],
        service.create_endpoint,
        201,
        body.url,
        body.events,
        body.description,
    )


@router.get(
    "/v1/webhooks",
    response_model=WebhookPage,
    responses=errors({422: ("invalid_cursor",)}, params=True),
    summary="List the org's webhook endpoints (never their secrets)",
)
async def list_webhooks(caller: AdminDep, limit: Limit = 50, cursor: Cursor = None) -> WebhookPage:
    """Oldest first, disabled ones included (with when and why)."""
    items, next_cursor = await caller.run(service.endpoints_page, limit, cursor)
    return WebhookPage.model_validate({"items": items, "next_cursor": next_cursor})


@router.get(
    "/v1/webhooks/{webhook_id}",
    response_model=Webhook,
    responses=errors(NOT_FOUND),
    summary="Read a webhook endpoint (never its secret)",
)
async def get_webhook(webhook_id: WebhookId, caller: AdminDep) -> Webhook:
    """The endpoint, whether it is enabled, and since when it fails if it does."""
    return Webhook.model_validate(await caller.run(service.get_endpoint, webhook_id))


@router.patch(
    "/v1/webhooks/{webhook_id}",
    response_model=Webhook,
    responses=errors(NOT_FOUND, TARGET, body=True),
    summary="Change a webhook endpoint's URL, events, description, or enable/disable it",
)
async def update_webhook(webhook_id: WebhookId, body: WebhookPatch, caller: AdminDep) -> Webhook:
    """A partial update: fields left out stay as they are; every field is checked before
    anything changes. `enabled: true` re-enables an endpoint disabled after failing (its
    `disabled_at`, `disabled_reason` and `failing_since` cleared). Audited with the names of
    the fields changed."""
    changes = body.model_dump(exclude_unset=True)
    return Webhook.model_validate(await caller.run(service.update_endpoint, webhook_id, changes))


@router.delete(
    "/v1/webhooks/{webhook_id}",
    response_model=WebhookDeleted,
    responses=errors(NOT_FOUND),
    summary="Delete a webhook endpoint (its pending deliveries are dropped)",
)
async def remove_webhook(webhook_id: WebhookId, caller: AdminDep) -> WebhookDeleted:
    """Answers what was removed: the endpoint as it was and how many pending deliveries
    were dropped. Its delivery history stays for its retention period. Audited."""
    return WebhookDeleted.model_validate(await caller.run(service.delete_endpoint, webhook_id))


@router.post(
    "/v1/webhooks/{webhook_id}/rotate-secret",
    response_model=WebhookWithSecret,
    responses=errors(NOT_FOUND, IDEMPOTENT, body=True),
    summary="Rotate the signing secret (the new one is shown once)",
)
async def rotate_webhook_secret(
    webhook_id: WebhookId,
    request: Request,
    caller: AdminDep,
    body: SecretRotation | None = None,
    idempotency_key: IdempotencyKey = None,
) -> Response:
    """A new `whsec_…` secret, in this answer only. The previous one keeps signing beside
    it for `overlap_s` seconds (24 h by default; `previous_secret_expires_at` says until
    when), so deliveries carry both signatures while the receiver switches over. Audited
    (never the secrets). Retry-safe with `Idempotency-Key` (a replay answers `secret`
    null)."""
    overlap_s = body.overlap_s if body is not None else int(service.DEFAULT_OVERLAP.total_seconds())
    return await _idempotent_secret(
        request,
        caller,
        idempotency_key,
        ["rotate", webhook_id, overlap_s],
        service.rotate_secret,
        200,
        webhook_id,
        timedelta(seconds=overlap_s),
    )
