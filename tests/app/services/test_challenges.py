"""Active liveness challenges (issue 21, item 4): the single-use nonce on SQLite and
PostgreSQL, and bundles built from real photos turned synthetically (tests/models/head_turns)."""

from __future__ import annotations

import hashlib
import threading
from collections.abc import Callable
from datetime import timedelta
from itertools import pairwise

import pytest

from app.errors import (
    LivenessChallengeExpiredError,
    LivenessChallengeNotFoundError,
    LivenessChallengeUsedError,
)
from app.runtime import Runtime
from app.services import challenges
from app.services.principal import Principal
from app.services.retention import CHALLENGE_KEEP, purge_liveness_challenges
from app.storage import challenges as store
from app.storage import read_transaction, utcnow
from tests.app.services.helpers import audit_trail

SEQUENCE = ["turn_left", "look_up"]


def test_a_challenge_is_issued_with_a_fresh_nonce_stored_only_as_its_hash(
    runtime: Runtime, new_admin: Callable[..., Principal]
) -> None:
    admin = new_admin()
    now = utcnow()
    issued = challenges.create_challenge(runtime, admin.org_id, admin, now=now)
    assert len(issued.nonce) == 43 and issued.id.startswith("lch_")
    assert issued.expires_at == now + timedelta(seconds=120)
    assert 2 <= len(issued.sequence) <= 3
    assert set(issued.sequence) <= set(challenges.STEPS)
    assert all(a != b for a, b in pairwise(issued.sequence))
    assert issued.instructions[0] == challenges.INSTRUCTIONS["center"]
    assert len(issued.instructions) == len(issued.sequence) + 1
    digest = hashlib.sha256(issued.nonce.encode()).hexdigest()
    with read_transaction(runtime.engine) as conn:
        row = store.find(conn, admin.org_id, digest)
    assert row is not None and row.id == issued.id and list(row.sequence) == issued.sequence
    actions = [e.action for e in audit_trail(runtime, admin)]
    assert "liveness.challenge_create" in actions
    again = challenges.create_challenge(runtime, admin.org_id, admin)
    assert again.nonce != issued.nonce and again.id != issued.id


def test_random_sequences_use_every_step_and_never_repeat_one() -> None:
    drawn = [challenges.random_sequence() for _ in range(400)]
    assert {len(s) for s in drawn} == {2, 3}
    assert {step for s in drawn for step in s} == set(challenges.STEPS)
    assert all(a != b for s in drawn for a, b in pairwise(s))


def test_a_nonce_is_used_once_then_refused(
    runtime: Runtime, new_admin: Callable[..., Principal]
) -> None:
    admin = new_admin()
    issued = challenges.create_challenge(runtime, admin.org_id, admin, sequence=SEQUENCE)
    used = challenges.consume_challenge(runtime, admin.org_id, issued.nonce)
    assert used.id == issued.id and used.sequence == SEQUENCE
    with pytest.raises(LivenessChallengeUsedError):
        challenges.consume_challenge(runtime, admin.org_id, issued.nonce)
    assert "liveness.challenge_use" in [e.action for e in audit_trail(runtime, admin)]


def test_an_expired_nonce_is_refused_as_expired(
    runtime: Runtime, new_admin: Callable[..., Principal]
) -> None:
    admin = new_admin()
    now = utcnow()
    issued = challenges.create_challenge(runtime, admin.org_id, admin, now=now)
    later = now + challenges.CHALLENGE_TTL + timedelta(seconds=1)
    with pytest.raises(LivenessChallengeExpiredError):
        challenges.consume_challenge(runtime, admin.org_id, issued.nonce, now=later)
    # Expiry refused it without using it: still expired (not "used") a moment later.
    with pytest.raises(LivenessChallengeExpiredError):
        challenges.consume_challenge(runtime, admin.org_id, issued.nonce, now=later)
    just_in_time = now + challenges.CHALLENGE_TTL - timedelta(seconds=1)
    assert challenges.consume_challenge(
        runtime, admin.org_id, issued.nonce, now=just_in_time
    ).id == (issued.id)


@pytest.mark.parametrize(
    "nonce",
    ["", "x", "A" * 42, "A" * 44, "!" * 43, "é" * 43, "A" * 10_000, "AAAA" * 10 + "AA\n"],
)
def test_garbage_nonces_are_not_found(
    runtime: Runtime, new_admin: Callable[..., Principal], nonce: str
) -> None:
    admin = new_admin()
    with pytest.raises(LivenessChallengeNotFoundError):
        challenges.consume_challenge(runtime, admin.org_id, nonce)


def test_another_orgs_nonce_is_not_found_and_stays_usable_by_its_org(
    runtime: Runtime, new_admin: Callable[..., Principal]
) -> None:
    owner, other = new_admin("Owner Bank"), new_admin("Other Bank")
    issued = challenges.create_challenge(runtime, owner.org_id, owner)
    with pytest.raises(LivenessChallengeNotFoundError):
        challenges.consume_challenge(runtime, other.org_id, issued.nonce)
    unknown = challenges.create_challenge(runtime, owner.org_id, owner).nonce[::-1]
    with pytest.raises(LivenessChallengeNotFoundError):
        challenges.consume_challenge(runtime, owner.org_id, unknown)
    assert challenges.consume_challenge(runtime, owner.org_id, issued.nonce).id == issued.id


def race_to_use(runtime: Runtime, org_id: str, nonce: str, users: int) -> list[str]:
    """`users` threads use one nonce at the same moment; what each got."""
    start = threading.Barrier(users)
    outcomes: list[str] = []

    def use() -> None:
        start.wait()
        try:
            challenges.consume_challenge(runtime, org_id, nonce)
            outcomes.append("won")
        except LivenessChallengeUsedError:
            outcomes.append("used")

    threads = [threading.Thread(target=use) for _ in range(users)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes


def test_two_concurrent_uses_of_one_nonce_exactly_one_wins(
    runtime: Runtime, new_admin: Callable[..., Principal]
) -> None:
    admin = new_admin()
    for _ in range(3):
        issued = challenges.create_challenge(runtime, admin.org_id, admin)
        outcomes = race_to_use(runtime, admin.org_id, issued.nonce, 4)
        assert sorted(outcomes) == ["used", "used", "used", "won"]


def test_the_retention_round_deletes_challenges_a_day_after_they_expired(
    runtime: Runtime, new_admin: Callable[..., Principal]
) -> None:
    admin = new_admin()
    now = utcnow()
    old = challenges.create_challenge(runtime, admin.org_id, admin, now=now - timedelta(days=2))
    recent = challenges.create_challenge(runtime, admin.org_id, admin, now=now)
    purged = purge_liveness_challenges(runtime, now=now)
    assert purged.get(admin.org_id) == 1
    with read_transaction(runtime.engine) as conn:
        assert store.find(conn, admin.org_id, challenges.nonce_digest(old.nonce)) is None
        assert store.find(conn, admin.org_id, challenges.nonce_digest(recent.nonce)) is not None
    # Within the day after expiry a late answer still learns that it expired.
    late = now + challenges.CHALLENGE_TTL + CHALLENGE_KEEP - timedelta(minutes=1)
    assert purge_liveness_challenges(runtime, now=late).get(admin.org_id) is None
    with pytest.raises(LivenessChallengeExpiredError):
        challenges.consume_challenge(runtime, admin.org_id, recent.nonce, now=late)
    assert "retention.purge_liveness_challenges" in [e.action for e in audit_trail(runtime, admin)]
