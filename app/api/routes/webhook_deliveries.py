"""Webhook delivery history and redelivery (admin scope). Another org's endpoint, event or
delivery is 404 like a missing one."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path

from app.api.contract import Codes, Cursor, JsonBodyRoute, Limit, errors
from app.api.deps import AdminDep
from app.api.schemas import WebhookDelivery, WebhookDeliveryDetail, WebhookDeliveryPage
from app.services import webhook_history as service

router = APIRouter(tags=["webhooks"], route_class=JsonBodyRoute)

WebhookId = Annotated[str, Path(examples=["wh_3c9e1a7b5d2f4e6a8b0c1d2e3f4a5b6c"])]
DeliveryId = Annotated[str, Path(examples=["dlv_6b1f0c2e9d8a4b7c8e5f3a2d1c0b9a87"])]
EventId = Annotated[str, Path(examples=["evt_0f1e2d3c4b5a69788796a5b4c3d2e1f0"])]
NO_WEBHOOK: Codes = {404: ("webhook_not_found",)}
NO_DELIVERY: Codes = {404: ("webhook_not_found", "webhook_delivery_not_found")}
PAGED: Codes = {422: ("invalid_cursor",)}


@router.get(
    "/v1/webhooks/{webhook_id}/deliveries",
    response_model=WebhookDeliveryPage,
    responses=errors(NO_WEBHOOK, PAGED, params=True),
    summary="Deliveries to a webhook: status, attempts, last answer",
)
async def list_webhook_deliveries(
    webhook_id: WebhookId, caller: AdminDep, limit: Limit = 50, cursor: Cursor = None
) -> WebhookDeliveryPage:
    """Oldest first; kept `retention.webhook_days` (30 by default)."""
    items, next_cursor = await caller.run(service.deliveries_to_endpoint, webhook_id, limit, cursor)
    return WebhookDeliveryPage.model_validate({"items": items, "next_cursor": next_cursor})


@router.get(
    "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}",
    response_model=WebhookDeliveryDetail,
    responses=errors(NO_DELIVERY),
    summary="One delivery with every attempt made of it",
)
async def get_webhook_delivery(
    webhook_id: WebhookId, delivery_id: DeliveryId, caller: AdminDep
) -> WebhookDeliveryDetail:
    """Each attempt's time, HTTP status, latency and error class (`attempt_log`)."""
    return WebhookDeliveryDetail.model_validate(
        await caller.run(service.get_delivery, webhook_id, delivery_id)
    )


@router.get(
    "/v1/webhook-events/{event_id}/deliveries",
    response_model=WebhookDeliveryPage,
    responses=errors({404: ("webhook_event_not_found",)}, PAGED, params=True),
    summary="An event's deliveries, one per webhook subscribed when it happened",
)
async def list_event_deliveries(
    event_id: EventId, caller: AdminDep, limit: Limit = 50, cursor: Cursor = None
) -> WebhookDeliveryPage:
    """The event id is the `webhook-id` header your receiver got. Oldest first."""
    items, next_cursor = await caller.run(service.deliveries_of_event, event_id, limit, cursor)
    return WebhookDeliveryPage.model_validate({"items": items, "next_cursor": next_cursor})


@router.post(
    "/v1/webhooks/{webhook_id}/deliveries/{delivery_id}/redeliver",
    status_code=202,
    response_model=WebhookDelivery,
    responses=errors(NO_DELIVERY),
    summary="Send a delivery again, now (a failed one too)",
)
async def redeliver_webhook_delivery(
    webhook_id: WebhookId, delivery_id: DeliveryId, caller: AdminDep
) -> WebhookDelivery:
    """The delivery becomes `pending` and due now; the worker sends it with the same
    `webhook-id` (receivers dedupe on it); should that fail, it is retried on what is left
    of the schedule (none for a delivery that had failed for good). Idempotent: asking
    again while it is due changes nothing. A disabled webhook's delivery waits until the
    webhook is enabled. Audited."""
    return WebhookDelivery.model_validate(
        await caller.run(service.redeliver, webhook_id, delivery_id)
    )
