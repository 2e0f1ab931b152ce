"""The stored answer to an Idempotency-Key commits with the enrollment, or not at all.

So a crash between the enrollment's commit and the HTTP answer can never make the client's
retry enroll the same bundle a second time.
"""

from __future__ import annotations

import hashlib
from collections.abc import Callable
from typing import Any

import pytest
import sqlalchemy as sa

from app.crypto import Scope
from app.runtime import Runtime
from app.services import idempotency
from app.services.principal import Principal
from app.services.subjects import CaptureBundle, enroll_subject
from app.storage import Connection, read_transaction
from app.storage.schema import enrollments, idempotency_keys
from tests.app.api.conftest import Org


def _row(runtime: Runtime, org_id: str, key: str) -> sa.Row | None:  # type: ignore[type-arg]
    with read_transaction(runtime.engine) as conn:
        return conn.execute(
            sa.select(idempotency_keys).where(
                idempotency_keys.c.org_id == org_id, idempotency_keys.c.key == key
            )
        ).first()


def _bundles(runtime: Runtime, org_id: str) -> int:
    with read_transaction(runtime.engine) as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count(sa.distinct(enrollments.c.bundle_id))).where(
                    enrollments.c.org_id == org_id
                )
            ).scalar_one()
        )


def test_the_answer_commits_with_the_enrollment(
    runtime: Runtime, new_org: Callable[[], Org], face_images: dict[str, bytes]
) -> None:
    org = new_org()
    principal = Principal(org.org_id, "test", frozenset({Scope.ADMIN}))
    assert idempotency.reserve(runtime, org.org_id, "k-1", hashlib.sha256(b"r").digest()) is None

    result = enroll_subject(
        runtime, principal, "c-1", CaptureBundle([face_images["person2"]]), idempotency_key="k-1"
    )
    row = _row(runtime, org.org_id, "k-1")
    assert row is not None and row.response_status == 201
    assert result.enrollment_id.encode() in bytes(row.response_body)
    assert _bundles(runtime, org.org_id) == 1


def test_a_failure_inside_the_transaction_stores_neither(
    runtime: Runtime,
    new_org: Callable[[], Org],
    face_images: dict[str, bytes],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    org = new_org()
    principal = Principal(org.org_id, "test", frozenset({Scope.ADMIN}))
    assert idempotency.reserve(runtime, org.org_id, "k-2", hashlib.sha256(b"r").digest()) is None

    store_answer = idempotency.store_answer

    def store_then_die(
        conn: Connection,
        org_id: str,
        key: str,
        status: int,
        payload: Any,
        subject_id: str | None = None,
    ) -> None:
        store_answer(conn, org_id, key, status, payload, subject_id)
        raise RuntimeError("the process dies before the commit")

    # The fault is injected at the last step inside the enrollment's transaction.
    monkeypatch.setattr(idempotency, "store_answer", store_then_die)
    with pytest.raises(RuntimeError):
        enroll_subject(
            runtime,
            principal,
            "c-2",
            CaptureBundle([face_images["person2"]]),
            idempotency_key="k-2",
        )
    row = _row(runtime, org.org_id, "k-2")
    assert row is not None and row.response_status is None  # still only reserved
    assert _bundles(runtime, org.org_id) == 0
