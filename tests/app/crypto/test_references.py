from __future__ import annotations

import numpy as np
import pytest

from app.crypto import KeyManager, ReferenceHasher


@pytest.fixture
def hasher(kms: KeyManager) -> ReferenceHasher:
    kms.create_org("org-a")
    kms.create_org("org-b")
    return ReferenceHasher(kms)


def vec(seed: int = 7) -> np.ndarray:
    v = np.random.default_rng(seed).standard_normal(128).astype(np.float32)
    return v / np.linalg.norm(v)


def test_reference_is_deterministic_and_verifies(hasher: ReferenceHasher) -> None:
    ids = {"org_id": "org-a", "model_id": "sface-2021dec", "enrollment_id": "enr-1"}
    ref = hasher.reference(**ids, vector=vec())
    assert len(ref) == 32
    assert hasher.reference(**ids, vector=vec()) == ref
    assert hasher.reference(**ids, vector=vec().tobytes()) == ref
    assert hasher.verify(ref, **ids, vector=vec())


def test_tampering_is_detected(hasher: ReferenceHasher) -> None:
    ids = {"org_id": "org-a", "model_id": "sface-2021dec", "enrollment_id": "enr-1"}
    v = vec()
    ref = hasher.reference(**ids, vector=v)
    nudged = v.copy()
    nudged[3] = np.nextafter(nudged[3], np.float32(1))
    assert not hasher.verify(ref, **ids, vector=nudged)
    assert not hasher.verify(ref, **{**ids, "enrollment_id": "enr-2"}, vector=v)
    assert not hasher.verify(ref, **{**ids, "model_id": "arcface-r50"}, vector=v)
    assert not hasher.verify(ref[:-1] + bytes([ref[-1] ^ 1]), **ids, vector=v)
    assert not hasher.verify(ref, **ids, vector=v.astype(np.float64))  # not what is stored


def test_same_vector_unrelated_across_orgs(hasher: ReferenceHasher) -> None:
    a = hasher.reference(org_id="org-a", model_id="m", enrollment_id="e", vector=vec())
    b = hasher.reference(org_id="org-b", model_id="m", enrollment_id="e", vector=vec())
    assert a != b
    assert not hasher.verify(a, org_id="org-b", model_id="m", enrollment_id="e", vector=vec())


def test_float64_is_refused(hasher: ReferenceHasher) -> None:
    with pytest.raises(ValueError, match="float32"):
        hasher.reference(
            org_id="org-a", model_id="m", enrollment_id="e", vector=vec().astype(np.float64)
        )
