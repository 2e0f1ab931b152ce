"""Retention: sealed frames are crypto-shredded once their org's retention has passed.

Each frame row carries `purge_after` (enrollment time + the org's `retention.frames_days`).
Purging drops the wrapped DEK (the shred) and deletes the object; embeddings stay until their
enrollment is retired or erased, and the audit log is never purged.
"""

from __future__ import annotations

from collections import Counter
from datetime import datetime

import sqlalchemy as sa

from app.runtime import Runtime
from app.services.principal import record
from app.storage.schema import frames, utcnow

BATCH = 500


def purge_expired_frames(runtime: Runtime, now: datetime | None = None) -> dict[str, int]:
    """Shred every frame past its `purge_after`; returns frames purged per org."""
    moment = now or utcnow()
    purged: Counter[str] = Counter()
    while True:
        with runtime.engine.begin() as conn:
            rows = conn.execute(
                sa.select(frames.c.id, frames.c.org_id, frames.c.object_key)
                .where(frames.c.purge_after <= moment, frames.c.purged_at.is_(None))
                .order_by(frames.c.purge_after)
                .limit(BATCH)
            ).all()
            if not rows:
                break
            conn.execute(
                sa.update(frames)
                .where(frames.c.id.in_([r.id for r in rows]))
                .values(wrapped_dek=None, purged_at=moment)
            )
            batch = Counter(r.org_id for r in rows)
            for org_id, count in batch.items():
                record(
                    conn,
                    runtime,
                    None,
                    org_id=org_id,
                    action="retention.purge_frames",
                    target=org_id,
                    details={"frames": count},
                    actor="retention",
                )
        for row in rows:  # after commit: a crash here leaves only unreadable ciphertext
            runtime.objects.delete(row.object_key)
        purged.update(batch)
    return dict(purged)
