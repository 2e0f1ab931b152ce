"""Shared watchlists: the one path on which one org's face meets another org's probe, and
only while both opted in."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from app.runtime import Runtime
from app.services.matching import Probe
from app.services.orgs import update_org_settings
from app.services.principal import Principal
from app.services.subjects import CaptureBundle, enroll_subject
from app.services.watchlists import (
    Contribution,
    WatchlistEntryNotFoundError,
    WatchlistNotFoundError,
    contribute,
    create_watchlist,
    invite,
    join,
    leave,
    screen,
    withdraw,
)
from tests.app.services.helpers import recapture


def shared_watchlist(
    runtime: Runtime, owner: Principal, member: Principal
) -> tuple[str, list[dict[str, str]]]:
    """Both orgs turn sharing on; the owner creates a watchlist and invites, the member joins."""
    for org in (owner, member):
        update_org_settings(runtime, org, {"watchlist_sharing": True})
    created = create_watchlist(runtime, owner, "Fraud ring", None)
    watchlist_id = created["watchlist_id"]
    steps = [
        invite(runtime, owner, watchlist_id, member.org_id),
        join(runtime, member, watchlist_id),
    ]
    return watchlist_id, steps


def test_a_member_screening_a_contributed_face_gets_a_hit_that_hides_the_contributor(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    owner, member = new_admin("Owner Bank"), new_admin("Member Bank")
    face = face_images["person0"]
    watchlist_id, steps = shared_watchlist(runtime, owner, member)
    assert steps == [
        {"watchlist_id": watchlist_id, "org_id": member.org_id, "state": "invited"},
        {"watchlist_id": watchlist_id, "org_id": member.org_id, "state": "active"},
    ]
    enroll_subject(runtime, owner, "fraudster-7", CaptureBundle([face]))
    contributed = contribute(
        runtime, owner, watchlist_id, Contribution("confirmed_fraud", subject_id="fraudster-7")
    )
    [entry_id] = contributed["entry_ids"]

    screened = screen(runtime, member, watchlist_id, Probe(image=recapture(face)))

    [hit] = screened["hits"]
    assert hit == {
        "watchlist_id": watchlist_id,
        "entry_id": entry_id,
        "reason_code": "confirmed_fraud",
        "score": hit["score"],
        "decision": "match",
    }
    assert runtime.pipeline.threshold <= hit["score"] <= 1.0
    assert "fraudster-7" not in repr(screened)
    assert owner.org_id not in repr(screened)
    assert screen(runtime, member, watchlist_id, Probe(image=face_images["person3"]))["hits"] == []


def test_hits_last_only_while_the_contributor_shares_and_the_member_stays(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    owner, member = new_admin("Owner Bank"), new_admin("Member Bank")
    face = face_images["person0"]
    watchlist_id, _ = shared_watchlist(runtime, owner, member)
    enroll_subject(runtime, owner, "fraudster-7", CaptureBundle([face]))
    [entry_id] = contribute(
        runtime, owner, watchlist_id, Contribution("confirmed_fraud", subject_id="fraudster-7")
    )["entry_ids"]
    probe = Probe(image=recapture(face))

    def hits() -> list[str]:
        return [h["entry_id"] for h in screen(runtime, member, watchlist_id, probe)["hits"]]

    assert hits() == [entry_id]
    update_org_settings(runtime, owner, {"watchlist_sharing": False})
    assert hits() == []
    update_org_settings(runtime, owner, {"watchlist_sharing": True})
    assert hits() == [entry_id]

    assert leave(runtime, member, watchlist_id) == {
        "watchlist_id": watchlist_id,
        "org_id": member.org_id,
        "state": "left",
    }
    # A former member no longer sees the watchlist at all: the 404 of any invisible one,
    # not the 403 `NotAMemberError` of a member whose own sharing is off.
    with pytest.raises(WatchlistNotFoundError):
        screen(runtime, member, watchlist_id, probe)


def test_a_withdrawn_entry_no_longer_hits_and_only_its_contributor_may_withdraw_it(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    owner, member = new_admin("Owner Bank"), new_admin("Member Bank")
    face = face_images["person2"]
    watchlist_id, _ = shared_watchlist(runtime, owner, member)
    [entry_id] = contribute(
        runtime, owner, watchlist_id, Contribution("mule_account", probe=Probe(image=face))
    )["entry_ids"]
    probe = Probe(image=recapture(face))
    assert [h["entry_id"] for h in screen(runtime, member, watchlist_id, probe)["hits"]] == [
        entry_id
    ]

    with pytest.raises(WatchlistEntryNotFoundError):
        withdraw(runtime, member, watchlist_id, [entry_id])
    assert withdraw(runtime, owner, watchlist_id, [entry_id]) == {
        "watchlist_id": watchlist_id,
        "withdrawn": [entry_id],
    }

    assert screen(runtime, member, watchlist_id, probe)["hits"] == []
