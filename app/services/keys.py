"""Key rotation: rewrap every frame DEK of an org under its primary KEK version."""

from __future__ import annotations

from collections.abc import Callable

import sqlalchemy as sa

from app.crypto import Purpose, RewrapItem, RewrapReport, kek_version_of, rewrap_all
from app.runtime import Runtime
from app.services.principal import record
from app.storage.schema import frames


def rewrap_org_frames(
    runtime: Runtime,
    org_id: str,
    batch: int = 500,
    progress: Callable[[int, int], None] | None = None,
) -> RewrapReport:
    """Rewrap in committed batches; an interrupted run is resumed by running it again
    (rows already on the primary version are skipped without being unwrapped)."""
    primary = runtime.kms.primary_version(org_id)
    with runtime.read() as conn:
        total = conn.execute(
            sa.select(sa.func.count())
            .select_from(frames)
            .where(frames.c.org_id == org_id, frames.c.wrapped_dek.is_not(None))
        ).scalar_one()
    overall = RewrapReport()
    done = 0
    last_id = ""
    while True:
        with runtime.engine.begin() as conn:
            rows = conn.execute(
                sa.select(frames.c.id, frames.c.wrapped_dek)
                .where(
                    frames.c.org_id == org_id,
                    frames.c.wrapped_dek.is_not(None),
                    frames.c.id > last_id,
                )
                .order_by(frames.c.id)
                .limit(batch)
            ).all()
            if not rows:
                break
            last_id = rows[-1].id

            def save(item: RewrapItem, new_data: bytes, conn: sa.Connection = conn) -> None:
                conn.execute(
                    sa.update(frames)
                    .where(frames.c.id == item.object_id)
                    .values(wrapped_dek=new_data, kek_version=int(kek_version_of(new_data)))
                )

            report = rewrap_all(
                runtime.kms,
                org_id,
                (RewrapItem(r.id, Purpose.FRAME, bytes(r.wrapped_dek)) for r in rows),
                save,
            )
            if report.rewrapped:
                record(
                    conn,
                    runtime,
                    None,
                    org_id=org_id,
                    action="keys.rewrap",
                    target=org_id,
                    details={"rewrapped": report.rewrapped, "kek_version": primary},
                )
        overall.total += report.total
        overall.rewrapped += report.rewrapped
        overall.skipped += report.skipped
        overall.failed += report.failed
        done += len(rows)
        if progress is not None:
            progress(done, total)
    return overall
