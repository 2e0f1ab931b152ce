"""Retention: sealed frames are crypto-shredded once their org's retention has passed.

Each frame row carries `purge_after` (enrollment time + the org's `retention.frames_days`).
Purging drops the wrapped DEK (the shred) and deletes the object; embeddings stay until their
enrollment is retired or erased, and the audit log is never purged.

Sealed frames are written to the object store before the transaction that references them
commits, and deleted after the one that shreds or erases them. A crash in between leaves an
object no live frame row points to: unreadable (its DEK was never stored, or is gone) but
taking space. `sweep_orphaned_frames` deletes those once they are older than any enrollment
could take to commit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable, Iterator
from datetime import datetime, timedelta
from itertools import islice

from app.runtime import Runtime
from app.services.principal import record
from app.services.rights import shred_erasures
from app.storage import feed, frames, read_transaction, utcnow, write_transaction

BATCH = 500
#: Sealed frames are object keys `frm_<hex>`; nothing else in the store is swept.
FRAME_KEY_PREFIX = "frm_"
#: An unreferenced frame younger than this may belong to an enrollment still committing.
ORPHAN_GRACE = timedelta(hours=1)


def purge_expired_frames(runtime: Runtime, now: datetime | None = None) -> dict[str, int]:
    """Shred every frame past its `purge_after`; returns frames purged per org."""
    moment = now or utcnow()
    purged: Counter[str] = Counter()
    while True:
        with write_transaction(runtime.engine) as conn:
            rows = frames.expired(conn, moment, BATCH)
            if not rows:
                break
            frames.shred(conn, [r.id for r in rows], moment)
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


def sweep_orphaned_frames(
    runtime: Runtime, now: datetime | None = None, grace: timedelta = ORPHAN_GRACE
) -> int:
    """Delete sealed frames older than ``grace`` that no unpurged frame row references.

    Returns how many were deleted; one audit row in the system log records the count.
    """
    cutoff = (now or utcnow()) - grace
    keys = (
        k for k in runtime.objects.keys_written_before(cutoff) if k.startswith(FRAME_KEY_PREFIX)
    )
    deleted = 0
    for batch in _batches(keys, BATCH):
        with read_transaction(runtime.engine) as conn:
            live = frames.live_object_keys(conn, batch)
        deleted += sum(runtime.objects.delete(k) for k in batch if k not in live)
    if deleted:
        with write_transaction(runtime.engine) as conn:
            record(
                conn,
                runtime,
                None,
                org_id=None,
                action="retention.sweep_orphaned_frames",
                target="object_store",
                details={"frames": deleted, "older_than": cutoff.isoformat()},
                actor="retention",
            )
    return deleted


def _batches(items: Iterable[str], size: int) -> Iterator[list[str]]:
    iterator = iter(items)
    while batch := list(islice(iterator, size)):
        yield batch


def run_retention(runtime: Runtime) -> tuple[dict[str, int], int] | None:
    """One retention round, on one replica at a time: frames purged per org and orphaned
    sealed frames deleted, or None when another replica is running it right now."""
    with feed.exclusive(runtime.engine, "retention") as mine:
        if not mine:
            return None
        purged, swept = purge_expired_frames(runtime), sweep_orphaned_frames(runtime)
        # Erasures of the last round become unreadable in backups too (app.services.rights).
        shred_erasures(runtime)
        return purged, swept
