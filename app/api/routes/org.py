"""The org's own API keys, settings and audit log (admin scope)."""

from __future__ import annotations

import dataclasses
from typing import Annotated, Any

from fastapi import APIRouter, Query, Response
from starlette.concurrency import run_in_threadpool

from app.api.deps import AdminDep
from app.api.schemas import (
    ERRORS,
    ApiKeyCreate,
    ApiKeyCreated,
    ApiKeyInfo,
    AuditPage,
    ErrorBody,
    OrgSettings,
    OrgSettingsPatch,
)
from app.runtime import Runtime
from app.services import orgs as service
from app.services.principal import Principal

router = APIRouter(tags=["org"])


@router.post(
    "/v1/api-keys",
    status_code=201,
    response_model=ApiKeyCreated,
    responses=ERRORS,
    summary="Create an API key (the key is shown once)",
)
async def create_key(body: ApiKeyCreate, caller: AdminDep) -> ApiKeyCreated:
    issued = await caller.run(service.issue_api_key, body.name, body.scopes, body.expires_at)
    return ApiKeyCreated(
        key_id=issued.key_id,
        api_key=issued.plaintext,
        name=issued.name,
        scopes=issued.scopes,
        expires_at=issued.expires_at,
    )


@router.get(
    "/v1/api-keys",
    response_model=list[ApiKeyInfo],
    responses=ERRORS,
    summary="List the org's API keys (never their secrets)",
)
async def list_keys(caller: AdminDep) -> list[ApiKeyInfo]:
    return [ApiKeyInfo.model_validate(k) for k in await caller.run(service.list_api_keys)]


@router.delete(
    "/v1/api-keys/{key_id}",
    status_code=204,
    responses={
        **ERRORS,
        404: {"model": ErrorBody, "description": "`api_key_not_found`"},
        409: {
            "model": ErrorBody,
            "description": "`cannot_revoke_own_key` (the calling key) or `last_admin_key` "
            "(the org's last working admin key): an org cannot lock itself out.",
        },
    },
    summary="Revoke an API key",
    description="Revoking a revoked key again is a no-op (204), so retries are safe.",
)
async def revoke_key(key_id: str, caller: AdminDep) -> Response:
    await caller.run(service.revoke_api_key, key_id)
    return Response(status_code=204)


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
        model_id=runtime.model_id,
    )


@router.get(
    "/v1/org/settings",
    response_model=OrgSettings,
    responses=ERRORS,
    summary="The org's settings and the threshold its decisions use",
)
async def get_settings(caller: AdminDep) -> OrgSettings:
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
    responses=ERRORS,
    summary="Change settings (threshold within safe bounds, policies, retention)",
)
async def patch_settings(body: OrgSettingsPatch, caller: AdminDep) -> OrgSettings:
    changes = body.model_dump(exclude_unset=True)
    if "retention" in changes and changes["retention"] is not None:
        changes["retention"] = {k: v for k, v in changes["retention"].items() if v is not None}

    def update(runtime: Runtime, principal: Principal) -> OrgSettings:
        return _settings_view(runtime, service.update_org_settings(runtime, principal, changes))

    return await caller.run(update)


@router.get(
    "/v1/audit",
    response_model=AuditPage,
    responses=ERRORS,
    summary="The org's own audit rows, newest first, details opened",
)
async def list_audit(
    caller: AdminDep,
    limit: Annotated[int, Query(ge=1, le=200)] = 50,
    # Bounded so that a huge number is a 422, not an overflow in the database driver.
    cursor: Annotated[int | None, Query(ge=1, le=2**63 - 1)] = None,
) -> AuditPage:

    page = await caller.run(service.audit_page, cursor, limit)
    return AuditPage.model_validate(
        {"items": [dataclasses.asdict(e) for e in page.entries], "next_cursor": page.next_cursor}
    )
