"""The org's own API keys, settings and audit log (admin scope)."""

from __future__ import annotations

import dataclasses
from datetime import timedelta
from typing import Annotated, Any

from fastapi import APIRouter, Path
from starlette.concurrency import run_in_threadpool

from app.api.contract import Cursor, JsonBodyRoute, Limit, errors
from app.api.deps import AdminDep
from app.api.schemas import (
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyInfo,
    ApiKeyPage,
    AuditPage,
    LivenessSettings,
    OrgSettings,
    OrgSettingsPatch,
    RequestLogPage,
)
from app.crypto import Scope
from app.runtime import Runtime
from app.services import orgs as service
from app.services import request_logs
from app.services.liveness import liveness_settings
from app.services.principal import Principal
from app.storage import utcnow

router = APIRouter(tags=["org"], route_class=JsonBodyRoute)


@router.post(
    "/v1/api-keys",
    status_code=201,
    response_model=ApiKeyCreated,
    responses=errors({422: ("invalid_settings",)}, body=True),
    summary="Create an API key (the key is shown once)",
)
async def create_api_key(body: ApiKeyCreate, caller: AdminDep) -> ApiKeyCreated:
    """The plaintext key is in this answer only; the service keeps its hash. Audited."""
    expires_at = utcnow() + timedelta(days=body.expires_in_days) if body.expires_in_days else None
    issued = await caller.run(service.issue_api_key, body.name, body.scopes, expires_at)
    return ApiKeyCreated(
        key_id=issued.key_id,
        api_key=issued.plaintext,
        name=issued.name,
        scopes=[Scope(s) for s in issued.scopes],
        expires_at=issued.expires_at,
    )


@router.get(
    "/v1/api-keys",
    response_model=ApiKeyPage,
    responses=errors({422: ("invalid_cursor",)}, params=True),
    summary="List the org's API keys (never their secrets)",
)
async def list_api_keys(caller: AdminDep, limit: Limit = 50, cursor: Cursor = None) -> ApiKeyPage:
    """Oldest first, revoked and expired keys included (with when)."""
    items, next_cursor = await caller.run(service.api_keys_page, limit, cursor)
    return ApiKeyPage.model_validate({"items": items, "next_cursor": next_cursor})


@router.delete(
    "/v1/api-keys/{key_id}",
    response_model=ApiKeyInfo,
    responses=errors(
        {404: ("api_key_not_found",), 409: ("cannot_revoke_own_key", "last_admin_key")}
    ),
    summary="Revoke an API key",
)
async def revoke_api_key(
    key_id: Annotated[str, Path(examples=["ttj7ncmsm3dac"])], caller: AdminDep
) -> ApiKeyInfo:
    """Answers the key as it now is (`revoked_at` set). Revoking a revoked key again
    answers the same, so retries are safe. An org cannot lock itself out: the calling key
    (409 `cannot_revoke_own_key`) and the org's last working admin key (409
    `last_admin_key`) are refused."""

    def revoke(runtime: Runtime, principal: Principal) -> dict[str, Any]:
        service.revoke_api_key(runtime, principal, key_id)
        return next(k for k in service.list_api_keys(runtime, principal) if k["key_id"] == key_id)

    return ApiKeyInfo.model_validate(await caller.run(revoke))


def _settings_view(runtime: Runtime, settings: dict[str, Any]) -> OrgSettings:
    threshold, source = service.effective_threshold(runtime, settings)
    return OrgSettings(
        threshold=settings.get("threshold"),
        threshold_calibration=settings.get("threshold_calibration"),
        effective_threshold=threshold,
        threshold_source=source,
        threshold_bounds=list(service.threshold_bounds(runtime)),
        duplicate_policy=settings["duplicate_policy"],
        retention=settings["retention"],
        watchlist_sharing=bool(settings["watchlist_sharing"]),
        data_residency=settings["data_residency"],
        liveness=LivenessSettings.model_validate(liveness_settings(settings)),
        model_id=runtime.model_id,
    )


@router.get(
    "/v1/org/settings",
    response_model=OrgSettings,
    responses=errors(),
    summary="The org's settings and the threshold its decisions use",
)
async def get_org_settings(caller: AdminDep) -> OrgSettings:
    """The stored settings, and the threshold in force with its source and safe bounds."""
    # A cache hit needs no worker thread: the hop costs about a third of this request.
    principal = caller.cached_principal()
    if principal is not None:
        settings = service.cached_org_settings(caller.runtime, principal.org_id)
        if settings is None:  # forgotten a moment ago: read them, but charge no second time
            settings = await run_in_threadpool(
                service.org_settings, caller.runtime, principal.org_id
            )
        return _settings_view(caller.runtime, settings)

    def read(runtime: Runtime, principal: Principal) -> OrgSettings:
        return _settings_view(runtime, service.org_settings(runtime, principal.org_id))

    return await caller.run(read)


@router.patch(
    "/v1/org/settings",
    response_model=OrgSettings,
    responses=errors({422: ("invalid_settings",)}, body=True),
    summary="Change settings (threshold within safe bounds, policies, retention)",
)
async def update_org_settings(body: OrgSettingsPatch, caller: AdminDep) -> OrgSettings:
    """A partial update: fields left out stay as they are; every field is validated before
    anything changes. Audited with the old and new values."""
    changes = body.model_dump(exclude_unset=True)
    if "retention" in changes:
        changes["retention"] = body.retention.model_dump(exclude_unset=True)
    if "liveness" in changes:
        changes["liveness"] = body.liveness.model_dump(mode="json", exclude_unset=True)

    def update(runtime: Runtime, principal: Principal) -> OrgSettings:
        return _settings_view(runtime, service.update_org_settings(runtime, principal, changes))

    return await caller.run(update)


@router.get(
    "/v1/audit",
    response_model=AuditPage,
    responses=errors({422: ("invalid_cursor",)}, params=True),
    summary="The org's own audit rows, newest first, details opened",
)
async def list_audit_events(
    caller: AdminDep, limit: Limit = 50, cursor: Cursor = None
) -> AuditPage:
    """Every state change and match decision of the org, newest first, with its place in
    the org's hash chain."""
    entries, next_cursor = await caller.run(service.audit_events_page, limit, cursor)
    return AuditPage.model_validate(
        {"items": [dataclasses.asdict(e) for e in entries], "next_cursor": next_cursor}
    )


@router.get(
    "/v1/request-logs",
    response_model=RequestLogPage,
    responses=errors({422: ("invalid_cursor",)}, params=True),
    summary="The org's own API requests, newest first",
)
async def list_request_logs(
    caller: AdminDep, limit: Limit = 50, cursor: Cursor = None
) -> RequestLogPage:
    """Every request an API key of the org made: when, request id, method, route template
    (never the path, so no subject id), status, latency and key id. Kept for the org's
    `retention.request_logs_days` (90 by default). Rows are written in batches off the
    request path, so a request shows up here within about a second."""
    items, next_cursor = await caller.run(request_logs.request_logs_page, limit, cursor)
    return RequestLogPage.model_validate({"items": items, "next_cursor": next_cursor})
