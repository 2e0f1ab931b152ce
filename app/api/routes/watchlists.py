"""Shared watchlists with bilateral opt-in (scope `watchlist`). Invisible ones are 404."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import WatchlistDep
from app.api.routes.matching import probe_from
from app.api.schemas import (
    ERRORS,
    EntriesCreated,
    EntriesWithdrawn,
    EntryCreate,
    ErrorBody,
    Invitation,
    Membership,
    ScreenRequest,
    ScreenResponse,
    Watchlist,
    WatchlistCreate,
)
from app.services import watchlists as service

router = APIRouter(tags=["watchlists"])
NOT_VISIBLE = {
    **ERRORS,
    404: {"model": ErrorBody, "description": "No such watchlist for you."},
    409: {"model": ErrorBody},
}


@router.post(
    "/v1/watchlists",
    status_code=201,
    response_model=Watchlist,
    responses=ERRORS,
    summary="Create a watchlist (you own it and are its first member)",
)
async def create(body: WatchlistCreate, caller: WatchlistDep) -> Watchlist:
    return Watchlist.model_validate(
        await caller.run(service.create_watchlist, body.name, body.region)
    )


@router.get(
    "/v1/watchlists",
    response_model=list[Watchlist],
    responses=ERRORS,
    summary="Watchlists you own, are invited to, or belong to",
)
async def list_all(caller: WatchlistDep) -> list[Watchlist]:
    return [Watchlist.model_validate(w) for w in await caller.run(service.list_watchlists)]


@router.post(
    "/v1/watchlists/{watchlist_id}/invitations",
    status_code=201,
    response_model=Membership,
    responses=NOT_VISIBLE,
    summary="Invite an org (owner)",
)
async def invite(watchlist_id: str, body: Invitation, caller: WatchlistDep) -> Membership:
    return Membership.model_validate(await caller.run(service.invite, watchlist_id, body.org_id))


@router.post(
    "/v1/watchlists/{watchlist_id}/membership",
    response_model=Membership,
    responses=NOT_VISIBLE,
    summary="Opt in to a watchlist you were invited to",
)
async def opt_in(watchlist_id: str, caller: WatchlistDep) -> Membership:
    return Membership.model_validate(await caller.run(service.join, watchlist_id))


@router.delete(
    "/v1/watchlists/{watchlist_id}/membership",
    response_model=Membership,
    responses=NOT_VISIBLE,
    summary="Leave: your entries leave screening at once",
)
async def leave(watchlist_id: str, caller: WatchlistDep) -> Membership:
    return Membership.model_validate(await caller.run(service.leave, watchlist_id))


@router.delete(
    "/v1/watchlists/{watchlist_id}/members/{org_id}",
    response_model=Membership,
    responses=NOT_VISIBLE,
    summary="Remove a member (owner)",
)
async def remove_member(watchlist_id: str, org_id: str, caller: WatchlistDep) -> Membership:
    return Membership.model_validate(await caller.run(service.remove_member, watchlist_id, org_id))


@router.delete(
    "/v1/watchlists/{watchlist_id}",
    response_model=Watchlist,
    responses=NOT_VISIBLE,
    summary="Close the watchlist (owner): no more screening or contributions",
)
async def close(watchlist_id: str, caller: WatchlistDep) -> Watchlist:
    return Watchlist.model_validate(await caller.run(service.close, watchlist_id))


@router.post(
    "/v1/watchlists/{watchlist_id}/entries",
    status_code=201,
    response_model=EntriesCreated,
    responses=NOT_VISIBLE,
    summary="Contribute entries from your subject or a fresh capture",
)
async def contribute(watchlist_id: str, body: EntryCreate, caller: WatchlistDep) -> EntriesCreated:
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
    responses=NOT_VISIBLE,
    summary="Withdraw your own entries",
)
async def withdraw(
    watchlist_id: str,
    caller: WatchlistDep,
    entry_id: Annotated[list[str], Query(min_length=1, max_length=100)],
) -> EntriesWithdrawn:
    return EntriesWithdrawn.model_validate(
        await caller.run(service.withdraw, watchlist_id, entry_id)
    )


@router.post(
    "/v1/watchlists/{watchlist_id}/screen",
    response_model=ScreenResponse,
    responses=NOT_VISIBLE,
    summary="Screen a probe against opted-in members' entries",
)
async def screen(watchlist_id: str, body: ScreenRequest, caller: WatchlistDep) -> ScreenResponse:
    return ScreenResponse.model_validate(
        await caller.run(service.screen, watchlist_id, probe_from(body.probe), body.top_k)
    )
