"""Key rotation: rewrap every frame DEK of an org under its primary KEK version."""

from __future__ import annotations

from collections.abc import Callable

from app.crypto import Purpose, RewrapItem, RewrapReport, rewrap_all
from app.errors import ConflictError
from app.runtime import Runtime
from app.services.principal import record
from app.storage import Connection, feed, frames, read_transaction, write_transaction


def rewrap_org_frames(
    runtime: Runtime,
    org_id: str,
    batch: int = 500,
    progress: Callable[[int, int], None] | None = None,
) -> RewrapReport:
    """Rewrap in committed batches; an interrupted run is resumed by running it again
    (rows already on the primary version are skipped without being unwrapped). One run per
    org at a time, across replicas and CLI processes (ConflictError otherwise)."""
    with feed.exclusive(runtime.engine, f"rewrap:{org_id}") as mine:
        if not mine:
            raise ConflictError(f"a key rotation of org {org_id!r} is running elsewhere")
        return _rewrap(runtime, org_id, batch, progress)


def _rewrap(
    runtime: Runtime, org_id: str, batch: int, progress: Callable[[int, int], None] | None
) -> RewrapReport:
    primary = runtime.kms.primary_version(org_id)
    with read_transaction(runtime.engine) as conn:
        total = frames.count_wrapped(conn, org_id)
    overall = RewrapReport()
    done = 0
    last_id = ""
    while True:
        with write_transaction(runtime.engine) as conn:
            rows = frames.wrapped_after(conn, org_id, last_id, batch)
            if not rows:
                break
            last_id = rows[-1].id

            def save(
                item: RewrapItem, new_data: bytes, kek_version: int, conn: Connection = conn
            ) -> None:
                frames.set_wrapped_dek(conn, item.object_id, new_data, kek_version)

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
