"""Shared watchlists with bilateral opt-in (scope `watchlist`). Invisible ones are 404."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Path, Query

from app.api.contract import INDEX, PROBE, Codes, Cursor, JsonBodyRoute, Limit, errors
from app.api.deps import WatchlistDep
from app.api.routes.matching import probe_from
from app.api.schemas import (
    EntriesCreated,
    EntriesWithdrawn,
    EntryCreate,
    Invitation,
    Membership,
    ScreenRequest,
    ScreenResponse,
    Watchlist,
    WatchlistCreate,
    WatchlistPage,
)
from app.services import watchlists as service

router = APIRouter(tags=["watchlists"], route_class=JsonBodyRoute)

WatchlistId = Annotated[str, Path(examples=["wl_8d2f4c1a9b7e4f0a8c6d2e1f3a5b7c9d"])]
NOT_VISIBLE: Codes = {404: ("watchlist_not_found",)}
# Sharing must be on, and the org's residency must allow the watchlist's region.
SHARING: Codes = {403: ("watchlist_sharing_disabled", "data_residency_forbids")}
MEMBER: Codes = {403: ("not_a_member",), 409: ("watchlist_closed",)}


@router.post(
    "/v1/watchlists",
    status_code=201,
    response_model=Watchlist,
    responses=errors(SHARING, body=True),
    summary="Create a watchlist (you own it and are its first member)",
)
async def create_watchlist(body: WatchlistCreate, caller: WatchlistDep) -> Watchlist:
    """Pinned to the served model pack and to a region (default: the deployment's). Needs
    `watchlist_sharing` on in the org's settings. Audited."""
    return Watchlist.model_validate(
        await caller.run(service.create_watchlist, body.name, body.region)
    )


@router.get(
    "/v1/watchlists",
    response_model=WatchlistPage,
    responses=errors({422: ("invalid_cursor",)}, params=True),
    summary="Watchlists you own, are invited to, or belong to",
)
async def list_watchlists(
    caller: WatchlistDep, limit: Limit = 50, cursor: Cursor = None
) -> WatchlistPage:
    """Oldest first; members are listed to the owner only."""
    items, next_cursor = await caller.run(service.list_watchlists, limit, cursor)
    return WatchlistPage.model_validate({"items": items, "next_cursor": next_cursor})


@router.post(
    "/v1/watchlists/{watchlist_id}/invitations",
    status_code=201,
    response_model=Membership,
    responses=errors(
        {404: ("watchlist_not_found", "org_not_found"), 409: ("watchlist_closed", "conflict")},
        body=True,
    ),
    summary="Invite an org (owner)",
)
async def invite_to_watchlist(
    watchlist_id: WatchlistId, body: Invitation, caller: WatchlistDep
) -> Membership:
    """The invited org sees the watchlist and may opt in; nothing is shared before it does.
    An org that is already a member is 409 `conflict`; no such org is 404 `org_not_found`."""
    return Membership.model_validate(await caller.run(service.invite, watchlist_id, body.org_id))


@router.post(
    "/v1/watchlists/{watchlist_id}/membership",
    response_model=Membership,
    responses=errors(NOT_VISIBLE, SHARING, {409: ("not_invited", "watchlist_closed")}),
    summary="Opt in to a watchlist you were invited to",
)
async def join_watchlist(watchlist_id: WatchlistId, caller: WatchlistDep) -> Membership:
    """Your entries take part in screening, and you may screen, from now on."""
    return Membership.model_validate(await caller.run(service.join, watchlist_id))


@router.delete(
    "/v1/watchlists/{watchlist_id}/membership",
    response_model=Membership,
    responses=errors(NOT_VISIBLE, {409: ("conflict",)}),
    summary="Leave: your entries leave screening at once",
)
async def leave_watchlist(watchlist_id: WatchlistId, caller: WatchlistDep) -> Membership:
    """Answers your membership as it now is (`left`). The owner cannot leave (409
    `conflict`): it closes the watchlist instead."""
    return Membership.model_validate(await caller.run(service.leave, watchlist_id))


@router.delete(
    "/v1/watchlists/{watchlist_id}/members/{org_id}",
    response_model=Membership,
    responses=errors(
        {404: ("watchlist_not_found", "not_found"), 409: ("conflict",)},
    ),
    summary="Remove a member (owner)",
)
async def remove_watchlist_member(
    watchlist_id: WatchlistId,
    org_id: Annotated[str, Path(examples=["org_96dbac396e3705db8bcbbaa69723cafd"])],
    caller: WatchlistDep,
) -> Membership:
    """Answers the membership as it now is (`removed`); the member's entries leave
    screening at once."""
    return Membership.model_validate(await caller.run(service.remove_member, watchlist_id, org_id))


@router.delete(
    "/v1/watchlists/{watchlist_id}",
    response_model=Watchlist,
    responses=errors(NOT_VISIBLE),
    summary="Close the watchlist (owner): no more screening or contributions",
)
async def close_watchlist(watchlist_id: WatchlistId, caller: WatchlistDep) -> Watchlist:
    """Answers the watchlist as it now is (`closed`); closing it again answers the same."""
    return Watchlist.model_validate(await caller.run(service.close, watchlist_id))


@router.post(
    "/v1/watchlists/{watchlist_id}/entries",
    status_code=201,
    response_model=EntriesCreated,
    responses=errors(
        PROBE,
        SHARING,
        MEMBER,
        {404: ("watchlist_not_found", "subject_not_found"), 409: ("conflict",)},
        body=True,
    ),
    summary="Contribute entries from your subject or a fresh capture",
)
async def add_watchlist_entries(
    watchlist_id: WatchlistId, body: EntryCreate, caller: WatchlistDep
) -> EntriesCreated:
    """From one of your subjects (every active embedding) or a probe; the entries carry a
    reason code and never your subject id, PII or frames. Audited."""
    contribution = service.Contribution(
        reason_code=body.reason_code,
        subject_id=body.subject_id,
        probe=probe_from(body.probe) if body.probe is not None else None,
    )
    return EntriesCreated.model_validate(
        await caller.run(service.contribute, watchlist_id, contribution)
    )


@router.delete(
    "/v1/watchlists/{watchlist_id}/entries",
    response_model=EntriesWithdrawn,
    responses=errors(
        {404: ("watchlist_not_found", "watchlist_entry_not_found")},
        params=True,
    ),
    summary="Withdraw your own entries",
)
async def withdraw_watchlist_entries(
    watchlist_id: WatchlistId,
    caller: WatchlistDep,
    entry_id: Annotated[
        list[str],
        Query(
            min_length=1,
            max_length=100,
            description="Entries to withdraw (repeat the parameter); all or none.",
            examples=[["wle_5a0f3c2e1d4b4a6f8e9c7b1a2d3e4f50"]],
        ),
    ],
) -> EntriesWithdrawn:
    """Answers the entries withdrawn; they leave screening at once. Audited."""
    return EntriesWithdrawn.model_validate(
        await caller.run(service.withdraw, watchlist_id, entry_id)
    )


@router.post(
    "/v1/watchlists/{watchlist_id}/screen",
    response_model=ScreenResponse,
    responses=errors(PROBE, INDEX, NOT_VISIBLE, SHARING, MEMBER, body=True),
    summary="Screen a probe against opted-in members' entries",
)
async def screen_watchlist(
    watchlist_id: WatchlistId, body: ScreenRequest, caller: WatchlistDep
) -> ScreenResponse:
    """Hits name the entry and its reason code, never the contributor's subject. Audited."""
    return ScreenResponse.model_validate(
        await caller.run(service.screen, watchlist_id, probe_from(body.probe), body.top_k)
    )
