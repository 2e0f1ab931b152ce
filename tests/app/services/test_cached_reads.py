"""Cheap requests from this replica's caches: the cache-only path gives the database path's
answer or none at all, never a stale or a wider one.

On PostgreSQL the replica's feed follower forgets cached rows when the notification of a
change arrives, which may be after the test has read them again: a cache-only answer is then
None, and `cached_after` reads through the database until the notifications have settled.
"""

from __future__ import annotations

import contextlib
import time

import pytest

from app.crypto import Scope
from app.errors import ForbiddenError, UnauthorizedError
from app.runtime import Runtime
from app.services.orgs import (
    cached_org_settings,
    create_org,
    issue_api_key,
    org_settings,
    revoke_api_key,
    update_org_settings,
)
from app.services.principal import Principal, authenticate, authenticate_cached


def cached_after(runtime: Runtime, plaintext: str, scope: Scope) -> Principal | None:
    """Authenticate through the database, then from the cache alone, until the feed is quiet."""
    deadline = time.monotonic() + 5
    while True:
        authenticate(runtime, plaintext, scope)
        cached = authenticate_cached(runtime, plaintext, scope)
        if cached is not None or time.monotonic() > deadline:
            return cached
        time.sleep(0.01)


def test_a_key_is_known_to_the_cache_only_after_the_database_said_so(runtime: Runtime) -> None:
    _, key = create_org(runtime, "Cache Bank")
    assert authenticate_cached(runtime, key.plaintext, Scope.ADMIN) is None

    principal = authenticate(runtime, key.plaintext, Scope.ADMIN)

    assert cached_after(runtime, key.plaintext, Scope.ADMIN) == principal


def test_the_cache_only_path_refuses_what_the_database_path_refuses(runtime: Runtime) -> None:
    _, key = create_org(runtime, "Cache Bank")
    admin = authenticate(runtime, key.plaintext, Scope.ADMIN)
    matcher = issue_api_key(runtime, admin, "matcher", [Scope.MATCH], None)
    assert cached_after(runtime, matcher.plaintext, Scope.MATCH) is not None

    with pytest.raises(ForbiddenError):
        authenticate_cached(runtime, matcher.plaintext, Scope.ADMIN)
    with pytest.raises(UnauthorizedError):
        authenticate_cached(runtime, matcher.plaintext[:-1] + "x", Scope.MATCH)

    revoke_api_key(runtime, admin, matcher.key_id)

    assert authenticate_cached(runtime, matcher.plaintext, Scope.MATCH) is None
    with pytest.raises(UnauthorizedError):
        authenticate(runtime, matcher.plaintext, Scope.MATCH)
    # The revoked row is cached now (refused), unless a late notification forgot it (None).
    with contextlib.suppress(UnauthorizedError):
        assert authenticate_cached(runtime, matcher.plaintext, Scope.MATCH) is None


def test_cached_settings_follow_a_change_and_are_a_copy(runtime: Runtime) -> None:
    _, key = create_org(runtime, "Cache Bank")
    admin = authenticate(runtime, key.plaintext, Scope.ADMIN)
    assert cached_org_settings(runtime, admin.org_id) is None
    deadline = time.monotonic() + 5
    while True:
        settings = org_settings(runtime, admin.org_id)
        cached = cached_org_settings(runtime, admin.org_id)
        if cached is not None or time.monotonic() > deadline:
            break
        time.sleep(0.01)
    assert cached == settings
    assert cached is not None
    cached["duplicate_policy"] = "changed by the caller"
    assert cached_org_settings(runtime, admin.org_id) == settings

    update_org_settings(runtime, admin, {"duplicate_policy": "reject"})

    assert cached_org_settings(runtime, admin.org_id) is None
    assert org_settings(runtime, admin.org_id)["duplicate_policy"] == "reject"
