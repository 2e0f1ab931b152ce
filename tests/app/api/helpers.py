"""Small helpers shared by the API tests: base64, and counting what a request changed."""

from __future__ import annotations

import base64
from dataclasses import dataclass
from datetime import timedelta
from typing import Any

import sqlalchemy as sa
from fastapi.testclient import TestClient
from httpx import Response

from app.runtime import Runtime
from app.storage.schema import audit_log, enrollments, frames, subjects, utcnow


def b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def audit_rows(runtime: Runtime, org_id: str) -> int:
    with runtime.engine.connect() as conn:
        return int(
            conn.execute(
                sa.select(sa.func.count()).select_from(audit_log).where(audit_log.c.chain == org_id)
            ).scalar_one()
        )


def audit_actions(runtime: Runtime, org_id: str) -> list[str]:
    with runtime.engine.connect() as conn:
        return list(
            conn.execute(
                sa.select(audit_log.c.action)
                .where(audit_log.c.chain == org_id)
                .order_by(audit_log.c.chain_seq)
            ).scalars()
        )


def object_keys(runtime: Runtime) -> list[str]:
    """Every object in the runtime's object store (a directory, or the database)."""
    return sorted(runtime.objects.keys_written_before(utcnow() + timedelta(days=1)))


@dataclass(frozen=True)
class State:
    """What an org holds: rows of each table, its audit rows, and the object store's files."""

    subjects: int
    enrollments: int
    frames: int
    audit: int
    objects: int


def org_state(runtime: Runtime, org_id: str) -> State:
    def count(table: sa.Table) -> int:
        return int(
            conn.execute(
                sa.select(sa.func.count()).select_from(table).where(table.c.org_id == org_id)
            ).scalar_one()
        )

    with runtime.engine.connect() as conn:
        counts = [count(subjects), count(enrollments), count(frames)]
    return State(*counts, audit_rows(runtime, org_id), len(object_keys(runtime)))


def enroll(
    client: TestClient,
    headers: dict[str, str],
    subject_id: str,
    *images: bytes,
    **fields: object,
) -> dict[str, Any]:
    """Enroll `images` as one bundle (JSON body); assert 201 and return the body."""
    response = client.post(
        f"/v1/subjects/{subject_id}/enrollments",
        headers=headers,
        json={"frames": [b64(i) for i in images], **fields},
    )
    assert response.status_code == 201, response.text
    body: dict[str, Any] = response.json()
    return body


def error_code(response: Response) -> str:
    code: str = response.json()["error"]["code"]
    return code
