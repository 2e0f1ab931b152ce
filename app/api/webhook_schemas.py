"""Request and response bodies of the webhook routes (`app.api.routes.webhooks`)."""

from __future__ import annotations

from datetime import datetime
from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field, StrictBool, StrictStr

from app.api.schemas import NEXT_CURSOR, JsonInt, Text, _omittable
from app.services.webhook_urls import MAX_URL_LENGTH
from app.services.webhooks import EVENT_TYPES, MAX_DESCRIPTION_LENGTH, MAX_OVERLAP

_ID_EXAMPLE = "wh_3f9a0c2e1d4b4a6f8e9c7b1a2d3e4f50"
_URL_EXAMPLE = "https://kyc.example.co.id/hooks/wajah"
_SECRET_EXAMPLE = "whsec_MfKQ9r8GKYqrTwjUPD8ILPZIo2LaLaSw"
_TIME = "2026-12-03T11:39:54.123456Z"

# Checked by the service, not here, so that each refusal carries its own code: a URL that is
# not one (422 `invalid_webhook_url`), an event type not in the catalogue (422
# `unknown_event_type`). The schema documents what is accepted.
_URL_DESCRIPTION = (
    f"Absolute http(s) URL, at most {MAX_URL_LENGTH} characters, without credentials; https "
    "in production mode. Hosts that are IP literals or resolve to loopback, private, "
    "link-local or metadata addresses are refused."
)
_URL_SCHEMA = {"maxLength": MAX_URL_LENGTH, "pattern": "^https?://", "format": "uri"}
WebhookUrl = Annotated[
    StrictStr,
    Field(description=_URL_DESCRIPTION, json_schema_extra=_URL_SCHEMA, examples=[_URL_EXAMPLE]),
]
EventType = Annotated[
    StrictStr, Field(json_schema_extra={"enum": list(EVENT_TYPES)}, examples=[EVENT_TYPES[0]])
]
EventTypes = Annotated[
    list[EventType],
    Field(min_length=1, max_length=len(EVENT_TYPES), description="Event types to receive."),
]
Description = Annotated[Text, Field(max_length=MAX_DESCRIPTION_LENGTH)]
_MAX_OVERLAP_SECONDS = int(MAX_OVERLAP.total_seconds())


class WebhookCreate(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={
            "examples": [
                {
                    "url": _URL_EXAMPLE,
                    "events": ["enrollment.created", "subject.erased"],
                    "description": "CRM sync",
                }
            ]
        },
    )
    url: WebhookUrl
    events: EventTypes
    description: Description | None = Field(None, description="Your note; at most 500 chars.")


class WebhookPatch(BaseModel):
    model_config = ConfigDict(
        extra="forbid",
        json_schema_extra={"examples": [{"enabled": True}, {"events": ["watchlist.hit"]}]},
    )
    # A field left out stays as it is; only `description` may be null (clears it).
    url: StrictStr = _omittable(_URL_DESCRIPTION, _URL_SCHEMA)
    events: EventTypes = _omittable()
    description: Description | None = Field(None, description="null clears it.")
    enabled: StrictBool = _omittable(
        "false: no deliveries; true: deliveries resume, and an endpoint the service disabled "
        "after failing is re-enabled (its failure state cleared)."
    )


class SecretRotation(BaseModel):
    model_config = ConfigDict(extra="forbid", json_schema_extra={"examples": [{"overlap_s": 3600}]})
    overlap_s: JsonInt = Field(
        86400,
        ge=0,
        le=_MAX_OVERLAP_SECONDS,
        description="Seconds the previous secret keeps signing beside the new one (24 h by "
        "default; 0 drops it at once).",
    )


class Webhook(BaseModel):
    """An endpoint as the API shows it: never its secret."""

    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": _ID_EXAMPLE,
                    "url": _URL_EXAMPLE,
                    "events": ["enrollment.created", "subject.erased"],
                    "description": "CRM sync",
                    "enabled": True,
                    "disabled_at": None,
                    "disabled_reason": None,
                    "failing_since": None,
                    "previous_secret_expires_at": None,
                    "created_at": _TIME,
                    "updated_at": _TIME,
                }
            ]
        }
    )
    id: str
    url: str
    events: list[str]
    description: str | None
    enabled: bool
    disabled_at: datetime | None = Field(..., description="When deliveries were stopped.")
    disabled_reason: str | None
    failing_since: datetime | None = Field(
        ..., description="First failed delivery of the current failing run; null when healthy."
    )
    previous_secret_expires_at: datetime | None = Field(
        ..., description="Until then the previous secret signs too (after a rotation)."
    )
    created_at: datetime
    updated_at: datetime


class WebhookWithSecret(Webhook):
    model_config = ConfigDict(
        json_schema_extra={
            "examples": [
                {
                    "id": _ID_EXAMPLE,
                    "url": _URL_EXAMPLE,
                    "events": ["enrollment.created"],
                    "description": None,
                    "enabled": True,
                    "disabled_at": None,
                    "disabled_reason": None,
                    "failing_since": None,
                    "previous_secret_expires_at": None,
                    "created_at": _TIME,
                    "updated_at": _TIME,
                    "secret": _SECRET_EXAMPLE,
                }
            ]
        }
    )
    secret: str | None = Field(
        ...,
        description="`whsec_<base64>`: shown in this answer only (sealed, never returned "
        "again). null in a replay of the request (`Idempotent-Replayed`): rotate it if the "
        "first answer was lost.",
    )


class WebhookPage(BaseModel):
    items: list[Webhook]
    next_cursor: str | None = Field(..., description=NEXT_CURSOR)


class WebhookDeleted(Webhook):
    pending_deliveries_dropped: int = Field(..., description="Deliveries that will not be made.")
    deleted_at: datetime
