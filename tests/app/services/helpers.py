"""Small helpers for the service specifications: other captures of a face, and reading back
what a verb left behind (through the services and storage modules, never raw SQL)."""

from __future__ import annotations

from datetime import timedelta

import cv2
import numpy as np

from app.runtime import Runtime
from app.services.orgs import audit_page
from app.services.principal import Principal
from app.services.subjects import EnrollmentResult
from app.storage import AuditEntry, frames, utcnow
from models.imaging import decode_image, encode_jpeg


def recapture(image: bytes, scale: float = 0.8) -> bytes:
    """Another capture of the same face: rescaled and more compressed (a genuine pair)."""
    return encode_jpeg(cv2.resize(decode_image(image), None, fx=scale, fy=scale), 60)


def blank_frame() -> bytes:
    """A frame with no face in it: a plain grey picture."""
    return encode_jpeg(np.full((240, 320, 3), 128, dtype=np.uint8), 92)


def audit_trail(runtime: Runtime, principal: Principal) -> list[AuditEntry]:
    """The org's whole audit log, oldest first."""
    return list(reversed(audit_page(runtime, principal, None, 500).entries))


def frame_object_keys(runtime: Runtime, org_id: str, *results: EnrollmentResult) -> list[str]:
    """The object-store keys of the sealed frames behind the enrollments."""
    embedding_ids = [f.embedding_id for r in results for f in r.frames if f.embedding_id]
    with runtime.engine.connect() as conn:
        return sorted(
            f.object_key for f in frames.frames_of_enrollments(conn, org_id, embedding_ids)
        )


def stored_objects(runtime: Runtime) -> int:
    """How many objects the object store holds (sealed frames of every org)."""
    return sum(1 for _ in runtime.objects.keys_written_before(utcnow() + timedelta(days=1)))
