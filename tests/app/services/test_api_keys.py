"""API keys: an org can revoke any key but cannot lock itself out."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from app.crypto import Scope
from app.errors import LastAdminKeyError, OwnKeyRevocationError, UnauthorizedError
from app.runtime import Runtime
from app.services.orgs import issue_api_key, list_api_keys, revoke_api_key
from app.services.principal import Principal, authenticate


def working(runtime: Runtime, plaintext: str) -> bool:
    try:
        authenticate(runtime, plaintext, Scope.ADMIN)
    except UnauthorizedError:
        return False
    return True


def test_a_key_cannot_revoke_itself(runtime: Runtime, new_admin: Callable[..., Principal]) -> None:
    admin = new_admin()

    with pytest.raises(OwnKeyRevocationError) as refused:
        revoke_api_key(runtime, admin, admin.key_id)

    assert refused.value.code == "cannot_revoke_own_key"
    assert all(k["revoked_at"] is None for k in list_api_keys(runtime, admin))


def test_two_admins_revoking_each_other_leave_one_working(
    runtime: Runtime, new_admin: Callable[..., Principal]
) -> None:
    """Both callers were authenticated before either revocation (two replicas, at once): the
    second revocation would leave no admin, and is refused."""
    first = new_admin()
    issued = issue_api_key(runtime, first, "second admin", [Scope.ADMIN], None)
    second = authenticate(runtime, issued.plaintext, Scope.ADMIN)

    revoke_api_key(runtime, first, second.key_id)
    with pytest.raises(LastAdminKeyError) as refused:
        revoke_api_key(runtime, second, first.key_id)

    assert refused.value.code == "last_admin_key"
    assert not working(runtime, issued.plaintext)
    keys = {k["key_id"]: k["revoked_at"] for k in list_api_keys(runtime, first)}
    assert keys[first.key_id] is None


def test_other_keys_are_revoked_and_a_second_revocation_is_a_no_op(
    runtime: Runtime, new_admin: Callable[..., Principal]
) -> None:
    admin = new_admin()
    matcher = issue_api_key(runtime, admin, "matcher", [Scope.MATCH], None)
    other_admin = issue_api_key(runtime, admin, "other admin", [Scope.ADMIN], None)

    revoke_api_key(runtime, admin, matcher.key_id)
    revoke_api_key(runtime, admin, matcher.key_id)
    revoke_api_key(runtime, admin, other_admin.key_id)

    revoked = {k["key_id"] for k in list_api_keys(runtime, admin) if k["revoked_at"]}
    assert revoked == {matcher.key_id, other_admin.key_id}
