"""The keyring's audit key, on the local keyring and SoftHSM2, with the state document in a file
and in the database: one key for every replica, none that the state document can replace."""

from __future__ import annotations

from collections.abc import Callable
from pathlib import Path

import pytest

from app.crypto import AuditKey, KeyManager, KeyringStore, LocalKeyring, RootKey, signature_valid
from tests.app.crypto.conftest import make_kms


def test_audit_key_is_shared_by_replicas_of_one_keyring(
    backend: str,
    open_keyring_store: Callable[[], KeyringStore],
    request: pytest.FixtureRequest,
) -> None:
    # One after the other: a PKCS#11 token takes one login per process.
    first = make_kms(backend, open_keyring_store(), request)
    a = AuditKey(first)
    mac, public_key, signature = a.mac(b"row"), a.public_key(), a.sign(b"checkpoint")
    first.close()
    second = make_kms(backend, open_keyring_store(), request)  # another replica
    try:
        b = AuditKey(second)
        assert b.mac(b"row") == mac
        assert len(mac) == 32
        assert b.mac(b"row!") != mac
        assert b.public_key() == public_key
        assert signature_valid(b.public_key(), b"checkpoint", signature)
        assert not signature_valid(b.public_key(), b"checkpoint!", signature)
        assert not signature_valid(b.public_key()[:31], b"checkpoint", signature)
    finally:
        second.close()


def test_audit_key_is_not_an_org_key(kms: KeyManager) -> None:
    kms.create_org("org-a")
    assert kms.audit_mac(b"m") != kms.mac("org-a", b"m")
    # Crypto-shredding an org leaves the audit key as it was: the log outlives the org.
    before = AuditKey(kms).mac(b"row")
    kms.destroy_org("org-a")
    assert AuditKey(kms).mac(b"row") == before


def test_forgetting_the_audit_key_in_the_state_does_not_make_a_new_one(
    backend: str,
    open_keyring_store: Callable[[], KeyringStore],
    request: pytest.FixtureRequest,
) -> None:
    """Whoever can write the state document (a database row on PostgreSQL) cannot swap the
    audit key for one of their own by deleting its record."""
    store = open_keyring_store()
    manager = make_kms(backend, store, request)
    before = AuditKey(manager).mac(b"row")
    manager.close()
    with store.mutate(lambda: {}) as state:
        state.pop("audit_key", None)
    again = make_kms(backend, open_keyring_store(), request)
    try:
        assert AuditKey(again).mac(b"row") == before
    finally:
        again.close()


def test_another_root_key_is_another_audit_key(tmp_path: Path) -> None:
    one = LocalKeyring(tmp_path / "one", RootKey(bytes(range(32)), source="one"))
    two = LocalKeyring(tmp_path / "two", RootKey(bytes(range(1, 33)), source="two"))
    assert AuditKey(one).mac(b"row") != AuditKey(two).mac(b"row")
    assert AuditKey(one).public_key() != AuditKey(two).public_key()
    # The same root key over a new state document: the same audit key (the log verifies
    # with the root key alone).
    three = LocalKeyring(tmp_path / "three", RootKey(bytes(range(32)), source="three"))
    assert AuditKey(one).mac(b"row") == AuditKey(three).mac(b"row")


@pytest.mark.softhsm
def test_the_hsm_audit_key_stays_in_the_token(
    open_keyring_store: Callable[[], KeyringStore], request: pytest.FixtureRequest
) -> None:
    import pkcs11
    from pkcs11 import Attribute, ObjectClass

    manager = make_kms("softhsm", open_keyring_store(), request)
    try:
        AuditKey(manager).mac(b"row")
        label = f"wajah:{manager.keyring_id}:audit:1:_keyring"  # type: ignore[attr-defined]
        key = manager._find(label)  # type: ignore[attr-defined]
        assert key[Attribute.EXTRACTABLE] is False
        assert key[Attribute.SENSITIVE] is True
        with pytest.raises(pkcs11.exceptions.PKCS11Error):
            key[Attribute.VALUE]
        assert key.object_class == ObjectClass.SECRET_KEY
    finally:
        manager.close()
