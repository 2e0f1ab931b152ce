"""The key lifecycle in the key managers (local keyring and SoftHSM2, state in a file and in
the database): retire, destroy, and versioned reference keys."""

from __future__ import annotations

from collections.abc import Callable

import numpy as np
import pytest

from app.crypto import (
    DecryptionError,
    EnvelopeCipher,
    KekState,
    KeyManager,
    KeyringStore,
    KeyStateError,
    LocalKeyring,
    Purpose,
    ReferenceHasher,
    RootKey,
)
from app.crypto.references import reference_version_of
from app.crypto.wire import kek_version_of, split_blob
from tests.app.crypto.conftest import make_kms

ORG = "org-a"
IDS = {"org_id": ORG, "model_id": "sface-2021dec", "enrollment_id": "emb-1"}


def vec(seed: int = 3) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(128).astype(np.float32)
    return v / np.linalg.norm(v)


def states(kms: KeyManager, org: str = ORG) -> dict[int, KekState]:
    return {info.version: info.state for info in kms.versions(org)}


def test_a_retired_version_unwraps_and_never_wraps(kms: KeyManager) -> None:
    cipher = EnvelopeCipher(kms)
    kms.create_org(ORG)
    blob = cipher.seal(b"frame", org_id=ORG, object_id="f1", purpose=Purpose.FRAME)
    kms.rotate(ORG)
    kms.retire_version(ORG, 1)
    kms.retire_version(ORG, 1)  # again: nothing changes

    assert states(kms) == {1: KekState.RETIRED, 2: KekState.PRIMARY}
    assert cipher.open(blob, org_id=ORG, object_id="f1", purpose=Purpose.FRAME) == b"frame"
    fresh = cipher.seal(b"new", org_id=ORG, object_id="f2", purpose=Purpose.FRAME)
    assert kek_version_of(fresh) == 2
    moved = cipher.rewrap(blob, org_id=ORG, object_id="f1", purpose=Purpose.FRAME)
    assert kek_version_of(moved) == 2


def test_retire_refuses_the_primary_unknown_and_destroyed_versions(kms: KeyManager) -> None:
    kms.create_org(ORG)
    with pytest.raises(KeyStateError, match="primary"):
        kms.retire_version(ORG, 1)
    with pytest.raises(KeyStateError, match="no KEK v7"):
        kms.retire_version(ORG, 7)
    kms.rotate(ORG)
    kms.destroy_version(ORG, 1)
    with pytest.raises(KeyStateError, match="destroyed already"):
        kms.retire_version(ORG, 1)
    assert states(kms) == {1: KekState.DESTROYED, 2: KekState.PRIMARY}


def test_a_destroyed_version_unwraps_nothing_even_after_a_restart(
    backend: str,
    open_keyring_store: Callable[[], KeyringStore],
    request: pytest.FixtureRequest,
) -> None:
    kms = make_kms(backend, open_keyring_store(), request)
    cipher = EnvelopeCipher(kms)
    kms.create_org(ORG)
    blob = cipher.seal(b"secret", org_id=ORG, object_id="o1", purpose=Purpose.AUDIT_DETAIL)
    wrapped, payload = split_blob(blob)
    kms.rotate(ORG)
    rewrapped = cipher.rewrap(wrapped, org_id=ORG, object_id="o1", purpose=Purpose.AUDIT_DETAIL)
    kms.retire_version(ORG, 1)
    kms.destroy_version(ORG, 1)
    kms.close()

    reopened = make_kms(backend, open_keyring_store(), request)
    try:
        again = EnvelopeCipher(reopened)
        with pytest.raises(DecryptionError):
            again.open(blob, org_id=ORG, object_id="o1", purpose=Purpose.AUDIT_DETAIL)
        with pytest.raises(DecryptionError):
            reopened.rewrap_dek(ORG, wrapped, b"anything")
        # The blob stays as it was; its DEK rewrapped under v2 and stored apart opens it.
        opened = again.open(
            blob,
            org_id=ORG,
            object_id="o1",
            purpose=Purpose.AUDIT_DETAIL,
            wrapped_dek=rewrapped,
        )
        assert opened == b"secret"
        assert len(payload) > 0
    finally:
        reopened.close()


def test_a_rewrapped_dek_of_another_object_does_not_open_a_blob(kms: KeyManager) -> None:
    cipher = EnvelopeCipher(kms)
    kms.create_org(ORG)
    one = cipher.seal(b"one", org_id=ORG, object_id="a1", purpose=Purpose.AUDIT_DETAIL)
    two = cipher.seal(b"two", org_id=ORG, object_id="a2", purpose=Purpose.AUDIT_DETAIL)
    with pytest.raises(DecryptionError):  # the DEK's associated data names its object
        cipher.open(
            one,
            org_id=ORG,
            object_id="a1",
            purpose=Purpose.AUDIT_DETAIL,
            wrapped_dek=split_blob(two)[0],
        )


def test_reference_versions_verify_until_destroyed(
    backend: str,
    open_keyring_store: Callable[[], KeyringStore],
    request: pytest.FixtureRequest,
) -> None:
    kms = make_kms(backend, open_keyring_store(), request)
    hasher = ReferenceHasher(kms)
    kms.create_org(ORG)
    v1 = hasher.reference(**IDS, vector=vec())
    assert len(v1) == 32 and reference_version_of(v1) == 1  # the format from before versions

    assert kms.rotate_reference_key(ORG) == 2
    v2 = hasher.reference(**IDS, vector=vec())
    assert len(v2) == 36 and reference_version_of(v2) == 2 and v2[4:] != v1
    assert hasher.verify(v1, **IDS, vector=vec()) and hasher.verify(v2, **IDS, vector=vec())
    assert not hasher.verify(v2[:3] + b"\x01" + v2[4:], **IDS, vector=vec())  # version edited
    assert not hasher.verify(b"\x00\x00\x00\x00" + v2[4:], **IDS, vector=vec())
    with pytest.raises(KeyStateError, match="primary"):
        kms.destroy_reference_version(ORG, 2)
    kms.close()

    reopened = make_kms(backend, open_keyring_store(), request)
    try:
        again = ReferenceHasher(reopened)
        assert reopened.reference_version(ORG) == 2
        assert again.verify(v1, **IDS, vector=vec())
        reopened.destroy_reference_version(ORG, 1)
        assert not again.verify(v1, **IDS, vector=vec())
        assert again.verify(v2, **IDS, vector=vec())
        with pytest.raises(KeyStateError, match="no live reference key v1"):
            reopened.destroy_reference_version(ORG, 1)
        assert [(i.version, i.state) for i in reopened.reference_versions(ORG)] == [
            (1, KekState.DESTROYED),
            (2, KekState.PRIMARY),
        ]
    finally:
        reopened.close()


def test_a_replica_learns_of_a_new_reference_version_on_its_own(
    backend: str,
    open_keyring_store: Callable[[], KeyringStore],
    request: pytest.FixtureRequest,
) -> None:
    if backend != "local":
        pytest.skip("one SoftHSM session per process is enough to show it")
    first = make_kms(backend, open_keyring_store(), request)
    second = make_kms(backend, open_keyring_store(), request)
    first.create_org(ORG)
    assert second.has_org(ORG)
    second.reference_version(ORG)  # second has loaded the state
    first.rotate_reference_key(ORG)
    made = ReferenceHasher(first).reference(**IDS, vector=vec())
    assert ReferenceHasher(second).verify(made, **IDS, vector=vec())  # looked up again


def test_root_rotation_carries_every_reference_version(
    open_keyring_store: Callable[[], KeyringStore],
) -> None:
    old_root = RootKey(bytes(range(32)), source="test")
    new_root = RootKey(bytes(range(32, 64)), source="test")
    kms = LocalKeyring(open_keyring_store(), old_root)
    kms.create_org(ORG)
    v1 = ReferenceHasher(kms).reference(**IDS, vector=vec())
    kms.rotate_reference_key(ORG)
    v2 = ReferenceHasher(kms).reference(**IDS, vector=vec())
    assert kms.rotate_root(new_root) == 3  # KEK v1, reference keys v1 and v2

    reopened = ReferenceHasher(LocalKeyring(open_keyring_store(), new_root))
    assert reopened.verify(v1, **IDS, vector=vec()) and reopened.verify(v2, **IDS, vector=vec())


def test_destroying_an_org_destroys_every_reference_version(kms: KeyManager) -> None:
    kms.create_org(ORG)
    kms.rotate_reference_key(ORG)
    kms.destroy_org(ORG)
    assert not kms.has_org(ORG)
    assert not ReferenceHasher(kms).verify(bytes(36), **IDS, vector=vec())
