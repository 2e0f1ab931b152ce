"""`verify_probe` (1:1): the best cosine between a probe and one subject of the caller's org,
decided against the model pack's calibrated threshold."""

from __future__ import annotations

from collections.abc import Callable

import pytest

from app.errors import InvalidProbeError, SubjectNotFoundError
from app.runtime import Runtime
from app.services.matching import Probe, verify_probe
from app.services.principal import Principal
from app.services.subjects import CaptureBundle, enroll_subject
from tests.app.services.helpers import audit_trail, recapture


def test_a_genuine_probe_matches_with_the_packs_threshold(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    admin = new_admin()
    face = face_images["person1"]
    enroll_subject(runtime, admin, "cust-1", CaptureBundle([face]))

    verdict = verify_probe(runtime, admin, "cust-1", Probe(image=recapture(face)))

    pack = runtime.pipeline.pack
    assert (verdict["subject_id"], verdict["decision"], verdict["probe"]) == (
        "cust-1",
        "match",
        "image",
    )
    assert (verdict["threshold"], verdict["model_id"]) == (pack.thresholds.cosine, pack.model_id)
    assert verdict["threshold_source"] == f"model pack {pack.model_id}: {pack.thresholds.source}"
    assert pack.thresholds.cosine <= verdict["score"] <= 1.0
    audited = audit_trail(runtime, admin)[-1]
    assert (audited.id, audited.action, audited.target) == (
        verdict["audit_id"],
        "match.verify",
        "cust-1",
    )
    assert audited.details == {
        "score": verdict["score"],
        "threshold": pack.thresholds.cosine,
        "decision": "match",
        "model_id": pack.model_id,
        "probe": "image",
        "liveness": verdict["liveness"],
    }
    assert verdict["liveness"]["decision"] == "not_checked"  # the org's policy is off


def test_another_persons_face_does_not_match(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    admin = new_admin()
    enroll_subject(runtime, admin, "cust-1", CaptureBundle([face_images["person1"]]))

    verdict = verify_probe(runtime, admin, "cust-1", Probe(image=face_images["person5"]))

    assert verdict["decision"] == "no_match"
    assert verdict["score"] < verdict["threshold"] == runtime.pipeline.threshold


def test_an_unknown_subject_is_not_found(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    admin = new_admin()

    with pytest.raises(SubjectNotFoundError):
        verify_probe(runtime, admin, "nobody", Probe(image=face_images["person1"]))


def test_a_vector_probe_of_the_wrong_dimension_or_model_is_invalid(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    admin = new_admin()
    enroll_subject(runtime, admin, "cust-1", CaptureBundle([face_images["person1"]]))
    dimension = runtime.pipeline.dimension
    trail = audit_trail(runtime, admin)

    too_long = Probe(vector=[0.1] * (dimension + 1), model_id=runtime.model_id)
    with pytest.raises(InvalidProbeError) as refused:
        verify_probe(runtime, admin, "cust-1", too_long)
    assert refused.value.message == (
        f"the probe vector has {dimension + 1} values; model {runtime.model_id} makes {dimension}"
    )
    other_model = Probe(vector=[0.1] * dimension, model_id="someone-elses-model")
    with pytest.raises(InvalidProbeError):
        verify_probe(runtime, admin, "cust-1", other_model)
    assert audit_trail(runtime, admin) == trail


def test_a_vector_probe_of_the_served_model_is_compared_like_an_image(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    admin = new_admin()
    face = face_images["person1"]
    enroll_subject(runtime, admin, "cust-1", CaptureBundle([face]))
    embedding = runtime.pipeline.capture(recapture(face)).embedding

    verdict = verify_probe(
        runtime,
        admin,
        "cust-1",
        Probe(vector=[float(x) for x in embedding], model_id=runtime.model_id),
    )

    by_image = verify_probe(runtime, admin, "cust-1", Probe(image=recapture(face)))
    assert (verdict["decision"], verdict["probe"], verdict["probe_quality"]) == (
        "match",
        "vector",
        None,
    )
    assert verdict["score"] == pytest.approx(by_image["score"], abs=1e-5)


def test_another_orgs_subject_is_not_found(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    bank, other_bank = new_admin("Bank"), new_admin("Other Bank")
    face = face_images["person1"]
    enroll_subject(runtime, bank, "cust-1", CaptureBundle([face]))

    with pytest.raises(SubjectNotFoundError):
        verify_probe(runtime, other_bank, "cust-1", Probe(image=recapture(face)))

    # The same subject id in the other org is its own subject, with its own face.
    enroll_subject(runtime, other_bank, "cust-1", CaptureBundle([face_images["person5"]]))
    theirs = verify_probe(runtime, other_bank, "cust-1", Probe(image=recapture(face)))
    ours = verify_probe(runtime, bank, "cust-1", Probe(image=recapture(face)))
    assert (theirs["decision"], ours["decision"]) == ("no_match", "match")
