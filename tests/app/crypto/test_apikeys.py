from __future__ import annotations

import hashlib
from datetime import UTC, datetime, timedelta

import pytest

from app.crypto import (
    InvalidApiKeyError,
    Scope,
    StoredApiKey,
    authenticate_api_key,
    generate_api_key,
)
from app.crypto.apikeys import parse_api_key, verify_api_key_secret

NOW = datetime(2025, 1, 1, tzinfo=UTC)


def test_generated_key_shape() -> None:
    plaintext, key_id, secret_hash = generate_api_key()
    assert isinstance(plaintext, str) and isinstance(key_id, str)
    assert plaintext.startswith(f"wjh_live_{key_id}_")
    assert len(plaintext) == len("wjh_live_") + 13 + 1 + 52 == 75
    secret = plaintext.rsplit("_", 1)[1]
    assert secret_hash == hashlib.sha256(secret.encode()).digest()
    assert secret.encode() not in secret_hash and plaintext.encode() != secret_hash
    assert "wjh_" not in repr(generate_api_key())  # repr hides plaintext and hash
    assert generate_api_key("test").plaintext.startswith("wjh_test_")


def test_keys_are_unique() -> None:
    keys = {generate_api_key().plaintext for _ in range(1000)}
    assert len(keys) == 1000


@pytest.mark.parametrize(
    "presented",
    [
        "",
        "wjh_live_",
        "sk_live_abcdefghijklm_" + "a" * 52,
        "wjh_prod_abcdefghijklm_" + "a" * 52,
        "wjh_live_abcdefghijklm_" + "a" * 51,
        "wjh_live_abcdefghijklm_" + "A" * 52,
        "wjh_live_abcdefghijklm_" + "a" * 52 + "\n",
    ],
)
def test_malformed_keys(presented: str) -> None:
    with pytest.raises(InvalidApiKeyError) as exc:
        parse_api_key(presented)
    assert exc.value.reason == "malformed"
    assert str(exc.value) == "invalid API key"


@pytest.fixture
def issued() -> tuple[str, StoredApiKey]:
    plaintext, key_id, secret_hash = generate_api_key()
    stored = StoredApiKey(
        key_id=str(key_id),
        org_id="org-a",
        secret_hash=bytes(secret_hash),  # type: ignore[arg-type]
        scopes=frozenset({Scope.ENROLL, Scope.MATCH}),
        expires_at=NOW + timedelta(days=1),
    )
    return str(plaintext), stored


def _flip(s: str, index: int) -> str:
    c = s[index]
    return s[:index] + ("b" if c != "b" else "c") + s[index + 1 :]


def test_authenticate_outcomes(issued: tuple[str, StoredApiKey]) -> None:
    plaintext, stored = issued
    table = {stored.key_id: stored}

    def check(key: str, **kwargs: object) -> str:
        try:
            authenticate_api_key(key, table.get, now=NOW, **kwargs)  # type: ignore[arg-type]
        except InvalidApiKeyError as exc:
            assert str(exc) == "invalid API key"  # one external outcome
            return exc.reason
        return "ok"

    assert check(plaintext) == "ok"
    assert check(plaintext, org_id="org-a", scope=Scope.MATCH) == "ok"
    secret_start = len(plaintext) - 52
    assert check(_flip(plaintext, secret_start)) == "secret_mismatch"  # wrong prefix of secret
    assert check(_flip(plaintext, len(plaintext) - 1)) == "secret_mismatch"  # wrong suffix
    assert check(_flip(plaintext, len("wjh_live_"))) == "unknown_key_id"
    assert check("x" + plaintext) == "malformed"
    assert check(plaintext.replace("_live_", "_test_")) == "wrong_environment"
    assert check(plaintext, org_id="org-b") == "other_org"
    assert check(plaintext, scope=Scope.ADMIN) == "missing_scope"
    table[stored.key_id] = StoredApiKey(**{**stored.__dict__, "expires_at": NOW})
    assert check(plaintext) == "expired"
    table[stored.key_id] = StoredApiKey(
        **{**stored.__dict__, "revoked_at": NOW - timedelta(seconds=1)}
    )
    assert check(plaintext) == "revoked"


def test_verify_secret() -> None:
    plaintext, _, secret_hash = generate_api_key()
    secret = str(plaintext).rsplit("_", 1)[1]
    assert verify_api_key_secret(secret, secret_hash)  # type: ignore[arg-type]
    assert not verify_api_key_secret(secret[:-1] + "a", hashlib.sha256(b"other").digest())
