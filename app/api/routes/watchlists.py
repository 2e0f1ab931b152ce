"""Shared watchlists with bilateral opt-in (scope `watchlist`). Invisible ones are 404."""

from __future__ import annotations

from typing import Annotated

from fastapi import APIRouter, Query

from app.api.deps import RuntimeDep, WatchlistDep
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
def create(body: WatchlistCreate, runtime: RuntimeDep, principal: WatchlistDep) -> Watchlist:
    return Watchlist.model_validate(
        service.create_watchlist(runtime, principal, body.name, body.region)
    )


@router.get(
    "/v1/watchlists",
    response_model=list[Watchlist],
    responses=ERRORS,
    summary="Watchlists you own, are invited to, or belong to",
)
def list_all(runtime: RuntimeDep, principal: WatchlistDep) -> list[Watchlist]:
    return [Watchlist.model_validate(w) for w in service.list_watchlists(runtime, principal)]


@router.post(
    "/v1/watchlists/{watchlist_id}/invitations",
    status_code=201,
    response_model=Membership,
    responses=NOT_VISIBLE,
    summary="Invite an org (owner)",
)
def invite(
    watchlist_id: str, body: Invitation, runtime: RuntimeDep, principal: WatchlistDep
) -> Membership:
    return Membership.model_validate(service.invite(runtime, principal, watchlist_id, body.org_id))


@router.post(
    "/v1/watchlists/{watchlist_id}/membership",
    response_model=Membership,
    responses=NOT_VISIBLE,
    summary="Opt in to a watchlist you were invited to",
)
def opt_in(watchlist_id: str, runtime: RuntimeDep, principal: WatchlistDep) -> Membership:
    return Membership.model_validate(service.join(runtime, principal, watchlist_id))


@router.delete(
    "/v1/watchlists/{watchlist_id}/membership",
    response_model=Membership,
    responses=NOT_VISIBLE,
    summary="Leave: your entries leave screening at once",
)
def leave(watchlist_id: str, runtime: RuntimeDep, principal: WatchlistDep) -> Membership:
    return Membership.model_validate(service.leave(runtime, principal, watchlist_id))


@router.delete(
    "/v1/watchlists/{watchlist_id}/members/{org_id}",
    response_model=Membership,
    responses=NOT_VISIBLE,
    summary="Remove a member (owner)",
)
def remove_member(
    watchlist_id: str, org_id: str, runtime: RuntimeDep, principal: WatchlistDep
) -> Membership:
    return Membership.model_validate(
        service.remove_member(runtime, principal, watchlist_id, org_id)
    )


@router.delete(
    "/v1/watchlists/{watchlist_id}",
    response_model=Watchlist,
    responses=NOT_VISIBLE,
    summary="Close the watchlist (owner): no more screening or contributions",
)
def close(watchlist_id: str, runtime: RuntimeDep, principal: WatchlistDep) -> Watchlist:
    return Watchlist.model_validate(service.close(runtime, principal, watchlist_id))


@router.post(
    "/v1/watchlists/{watchlist_id}/entries",
    status_code=201,
    response_model=EntriesCreated,
    responses=NOT_VISIBLE,
    summary="Contribute entries from your subject or a fresh capture",
)
def contribute(
    watchlist_id: str, body: EntryCreate, runtime: RuntimeDep, principal: WatchlistDep
) -> EntriesCreated:
    contribution = service.Contribution(
        reason_code=body.reason_code,
        subject_id=body.subject_id,
        probe=probe_from(body.probe) if body.probe is not None else None,
    )
    return EntriesCreated.model_validate(
        service.contribute(runtime, principal, watchlist_id, contribution)
    )


@router.delete(
    "/v1/watchlists/{watchlist_id}/entries",
    response_model=EntriesWithdrawn,
    responses=NOT_VISIBLE,
    summary="Withdraw your own entries",
)
def withdraw(
    watchlist_id: str,
    runtime: RuntimeDep,
    principal: WatchlistDep,
    entry_id: Annotated[list[str], Query(min_length=1, max_length=100)],
) -> EntriesWithdrawn:
    return EntriesWithdrawn.model_validate(
        service.withdraw(runtime, principal, watchlist_id, entry_id)
    )


@router.post(
    "/v1/watchlists/{watchlist_id}/screen",
    response_model=ScreenResponse,
    responses=NOT_VISIBLE,
    summary="Screen a probe against opted-in members' entries",
)
def screen(
    watchlist_id: str, body: ScreenRequest, runtime: RuntimeDep, principal: WatchlistDep
) -> ScreenResponse:
    return ScreenResponse.model_validate(
        service.screen(runtime, principal, watchlist_id, probe_from(body.probe), body.top_k)
    )
