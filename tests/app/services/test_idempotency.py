"""`Idempotency-Key`: reserve before the work, the answer stored with the change, replayed to
a retry of the same request, refused to a different one."""

from __future__ import annotations

import json
from collections.abc import Callable

import pytest

from app.errors import IdempotencyInFlightError, IdempotencyKeyReusedError
from app.runtime import Runtime
from app.services import idempotency
from app.services.idempotency import StoredAnswer, request_hash
from app.services.principal import Principal
from app.services.subjects import CaptureBundle, enroll_subject, list_subjects

ENROLL_CUST_1 = request_hash("POST", "/v1/subjects/cust-1/enrollments", b"bundle one")
ENROLL_CUST_2 = request_hash("POST", "/v1/subjects/cust-2/enrollments", b"bundle one")


def test_the_answer_stored_by_an_enrollment_is_replayed_to_the_same_request(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    admin = new_admin()
    assert idempotency.reserve(runtime, admin.org_id, "retry-1", ENROLL_CUST_1) is None

    result = enroll_subject(
        runtime, admin, "cust-1", CaptureBundle([face_images["person2"]]), idempotency_key="retry-1"
    )

    replay = idempotency.reserve(runtime, admin.org_id, "retry-1", ENROLL_CUST_1)
    assert replay == StoredAnswer(201, idempotency.encode_answer(result))
    assert json.loads(replay.body)["enrollment_id"] == result.enrollment_id
    # The replay changed nothing: still one subject with one embedding.
    page, _ = list_subjects(runtime, admin)
    assert [(s["subject_id"], s["active_embeddings"]) for s in page] == [("cust-1", 1)]


def test_the_same_key_with_a_different_request_is_refused(
    runtime: Runtime, new_admin: Callable[..., Principal], face_images: dict[str, bytes]
) -> None:
    admin = new_admin()
    idempotency.reserve(runtime, admin.org_id, "retry-1", ENROLL_CUST_1)
    result = enroll_subject(
        runtime, admin, "cust-1", CaptureBundle([face_images["person2"]]), idempotency_key="retry-1"
    )

    with pytest.raises(IdempotencyKeyReusedError):
        idempotency.reserve(runtime, admin.org_id, "retry-1", ENROLL_CUST_2)
    # An answered key is not released: the answer stays for the retries still to come.
    idempotency.release(runtime, admin.org_id, "retry-1")
    replay = idempotency.reserve(runtime, admin.org_id, "retry-1", ENROLL_CUST_1)
    assert replay == StoredAnswer(201, idempotency.encode_answer(result))


def test_a_reservation_in_flight_refuses_a_retry_until_it_is_released(
    runtime: Runtime, new_admin: Callable[..., Principal]
) -> None:
    admin = new_admin()
    assert idempotency.reserve(runtime, admin.org_id, "retry-2", ENROLL_CUST_1) is None

    with pytest.raises(IdempotencyInFlightError):
        idempotency.reserve(runtime, admin.org_id, "retry-2", ENROLL_CUST_1)
    # A different request is told the key is taken, whether or not the first is done.
    with pytest.raises(IdempotencyKeyReusedError):
        idempotency.reserve(runtime, admin.org_id, "retry-2", ENROLL_CUST_2)

    idempotency.release(runtime, admin.org_id, "retry-2")
    assert idempotency.reserve(runtime, admin.org_id, "retry-2", ENROLL_CUST_2) is None


def test_keys_belong_to_an_org(runtime: Runtime, new_admin: Callable[..., Principal]) -> None:
    bank, other_bank = new_admin("Bank"), new_admin("Other Bank")
    assert idempotency.reserve(runtime, bank.org_id, "retry-1", ENROLL_CUST_1) is None

    assert idempotency.reserve(runtime, other_bank.org_id, "retry-1", ENROLL_CUST_2) is None
