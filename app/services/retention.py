"""Retention: every data class kept for its period, per org overridable, then purged by one
sweeper (`run_retention`: hourly in the server, `wajah retention run`, one replica at a time).

Classes (`CLASSES`, in the order a round sweeps them; README "Retention"):

====================  ==============================  ========================================
class                 kept (org setting `retention.`)  purged by
====================  ==============================  ========================================
frames                90 days (`frames_days`)          crypto-shred: wrapped DEK dropped, object
                                                       deleted (`purge_after` set at enroll)
source_documents      90 days (`source_documents_days`) row (with its DEK) and object deleted
request_logs          90 days (`request_logs_days`)    rows deleted
webhook_deliveries    30 days (`webhook_days`)         attempts, finished deliveries and their
                                                       events deleted
idempotency           1 day = 24 h (`idempotency_days`) rows deleted (a retry runs again)
liveness_challenges   1 day after expiry (no setting)  rows deleted (nonces are only hashes)
audit                 7 years (`audit_days` >= 2557)   oldest rows deleted behind a signed anchor
customer_records      org closure + 365 days           every subject erased, logs deleted, keys
                      (`closure_grace_days`)           destroyed (`app.services.closure`)
====================  ==============================  ========================================

Embeddings stay until their enrollment is retired or erased. Every sweep takes `now`, so a
test (or an operator replaying a missed night) passes the clock instead of patching time.
Each class writes one audit row per org it purged something of (in the org's own log), and
the round one row in the system log with the totals per class.

Sealed frames are written to the object store before the transaction that references them
commits, and deleted after the one that shreds or erases them. A crash in between leaves an
object no live frame row points to: unreadable (its DEK was never stored, or is gone) but
taking space. `sweep_orphaned_frames` deletes those once they are older than any enrollment
could take to commit.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import datetime, timedelta
from itertools import islice
from typing import Any

from app.runtime import Runtime
from app.services import closure
from app.services.principal import record
from app.services.rights import shred_erasures
from app.storage import (
    Connection,
    audit,
    challenges,
    documents,
    feed,
    frames,
    read_transaction,
    retention,
    utcnow,
    webhook_deliveries,
    write_transaction,
)
from app.storage.webhooks import record_event

BATCH = 500
#: Sealed frames are object keys `frm_<hex>`, sealed source documents `doc_<hex>`; nothing
#: else in the store is swept.
FRAME_KEY_PREFIX = "frm_"
DOCUMENT_KEY_PREFIX = "doc_"
#: An unreferenced frame younger than this may belong to an enrollment still committing.
ORPHAN_GRACE = timedelta(hours=1)

#: Expired liveness challenges are kept this long after they expire (then deleted).
CHALLENGE_KEEP = timedelta(days=1)

#: A sweep: the rows (or objects) it purged per org id (None: the system log).
Sweep = Callable[[Runtime, datetime], dict[str, int]]


@dataclass(frozen=True)
class RetentionClass:
    name: str
    setting: str  # the org setting `retention.<setting>`, in days
    purged_by: str
    sweep: Sweep


CLASSES: dict[str, RetentionClass] = {}


def register_class(kind: RetentionClass) -> None:
    """Add (or replace) a class the round sweeps: how the webhooks module plugs its
    delivery history in (`webhook_deliveries`, setting `webhook_days`)."""
    CLASSES[kind.name] = kind


@dataclass
class RetentionReport:
    """What one round purged: per class, per org (the system log as "_system")."""

    purged: dict[str, dict[str, int]] = field(default_factory=dict)
    orphaned_frames: int = 0

    def totals(self) -> dict[str, int]:
        return {name: sum(per_org.values()) for name, per_org in self.purged.items()}


def cutoffs(runtime: Runtime, setting: str, now: datetime) -> dict[str, datetime]:
    """Per org, the moment before which its rows of class ``setting`` have expired."""
    with read_transaction(runtime.engine) as conn:
        every = retention.all_org_settings(conn)
    return {o: now - timedelta(days=int(s["retention"][setting])) for o, s in every.items()}


def _audit_purge(
    conn: Connection, runtime: Runtime, org_id: str, action: str, details: dict[str, Any]
) -> None:
    # A closed org whose keys are destroyed cannot seal a row of its own: the system log
    # records its purges, naming it.
    own = org_id != audit.SYSTEM_CHAIN and runtime.kms.has_org(org_id)
    record(
        conn,
        runtime,
        None,
        org_id=org_id if own else None,
        action=action,
        target=org_id,
        details=details,
        actor="retention",
    )


# --- frames -------------------------------------------------------------------------------------


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
                _audit_purge(conn, runtime, org_id, "retention.purge_frames", {"frames": count})
        for row in rows:  # after commit: a crash here leaves only unreadable ciphertext
            runtime.objects.delete(row.object_key)
        purged.update(batch)
    return dict(purged)


def sweep_orphaned_frames(
    runtime: Runtime, now: datetime | None = None, grace: timedelta = ORPHAN_GRACE
) -> int:
    """Delete sealed frames (and source documents) older than ``grace`` that no unpurged
    frame row (no document row) references.

    Returns how many were deleted; one audit row in the system log records the count.
    """
    cutoff = (now or utcnow()) - grace
    keys = (
        k
        for k in runtime.objects.keys_written_before(cutoff)
        if k.startswith((FRAME_KEY_PREFIX, DOCUMENT_KEY_PREFIX))
    )
    deleted = 0
    for batch in _batches(keys, BATCH):
        with read_transaction(runtime.engine) as conn:
            live = frames.live_object_keys(conn, batch) | documents.live_object_keys(conn, batch)
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


# --- source documents ----------------------------------------------------------------------------


def purge_source_documents(runtime: Runtime, now: datetime | None = None) -> dict[str, int]:
    """Delete the ID documents (`app.services.onboarding`) older than each org's
    `source_documents_days`, row and sealed object; documents per org. A document tied to a
    subject goes earlier if the subject is erased; one tied to none goes only this way."""
    moment = now or utcnow()
    purged: dict[str, int] = {}
    for org_id, cutoff in cutoffs(runtime, "source_documents_days", moment).items():
        total = 0
        while True:
            with write_transaction(runtime.engine) as conn:
                keys = documents.delete_expired(conn, org_id, cutoff)
                if keys:
                    details = {"source_documents": len(keys), "older_than": cutoff.isoformat()}
                    _audit_purge(conn, runtime, org_id, "retention.purge_source_documents", details)
            for key in keys:  # after commit: a crash here leaves only unreadable ciphertext
                runtime.objects.delete(key)
            total += len(keys)
            if len(keys) < documents.BATCH:
                break
        if total:
            purged[org_id] = total
    return purged


# --- rows deleted by age: request logs, idempotency records --------------------------------------


def _purge_by_age(
    runtime: Runtime,
    now: datetime,
    setting: str,
    action: str,
    delete: Callable[[Connection, str, datetime], int],
) -> dict[str, int]:
    purged: dict[str, int] = {}
    for org_id, cutoff in cutoffs(runtime, setting, now).items():
        total = 0
        while True:
            with write_transaction(runtime.engine) as conn:
                count = delete(conn, org_id, cutoff)
                total += count
                done = count < retention.DELETE_BATCH
                if done and total:
                    details = {"rows": total, "older_than": cutoff.isoformat()}
                    _audit_purge(conn, runtime, org_id, action, details)
            if done:
                break
        if total:
            purged[org_id] = total
    return purged


def purge_request_logs(runtime: Runtime, now: datetime | None = None) -> dict[str, int]:
    """Delete request-log rows older than each org's `request_logs_days`; rows per org."""
    return _purge_by_age(
        runtime,
        now or utcnow(),
        "request_logs_days",
        "retention.purge_request_logs",
        retention.purge_request_logs,
    )


def purge_idempotency_records(runtime: Runtime, now: datetime | None = None) -> dict[str, int]:
    """Delete Idempotency-Key records older than each org's `idempotency_days` (24 h by
    default): a retry after that runs as a new request."""
    return _purge_by_age(
        runtime,
        now or utcnow(),
        "idempotency_days",
        "retention.purge_idempotency",
        retention.purge_idempotency,
    )


def purge_liveness_challenges(runtime: Runtime, now: datetime | None = None) -> dict[str, int]:
    """Delete liveness challenges that expired more than `CHALLENGE_KEEP` ago, used or not:
    until then a late answer learns that its challenge expired (410), not that it never
    existed (404). A challenge's nonce is stored only as a hash; nothing is shredded."""
    cutoff = (now or utcnow()) - CHALLENGE_KEEP
    purged: Counter[str] = Counter()
    while True:
        with write_transaction(runtime.engine) as conn:
            batch = challenges.purge_expired(conn, cutoff, BATCH)
            for org_id, count in batch.items():
                details = {"rows": count, "expired_before": cutoff.isoformat()}
                _audit_purge(conn, runtime, org_id, "retention.purge_liveness_challenges", details)
        purged.update(batch)
        if sum(batch.values()) < BATCH:
            return dict(purged)


def purge_webhook_deliveries(runtime: Runtime, now: datetime | None = None) -> dict[str, int]:
    """Delete webhook attempts, finished deliveries and the events left without deliveries
    older than each org's `webhook_days` (30 by default); rows per org."""
    return _purge_by_age(
        runtime,
        now or utcnow(),
        "webhook_days",
        "retention.purge_webhook_history",
        webhook_deliveries.purge_history,
    )


# --- the audit log ------------------------------------------------------------------------------


def purge_audit(runtime: Runtime, now: datetime | None = None) -> dict[str, int]:
    """Delete audit rows older than the chain's org's `audit_days` (7 years by default, the
    system log likewise), each chain from its start, behind a signed anchor (see
    `app.storage.audit`). Cut-offs fall on midnight UTC, so a chain is anchored at most once
    a day. A chain whose prefix does not verify is left whole and reported in the system log:
    evidence is never purged."""
    moment = now or utcnow()
    by_org = cutoffs(runtime, "audit_days", moment)
    default_days = retention.DEFAULT_AUDIT_DAYS
    with read_transaction(runtime.engine) as conn:
        # Every chain that may have rows to purge: those with rows before the latest cut-off.
        latest = max([*by_org.values(), moment - timedelta(days=default_days)])
        chains = audit.chains_with_rows_before(conn, _midnight(latest))
    purged: dict[str, int] = {}
    for chain in chains:
        cutoff = by_org.get(chain, moment - timedelta(days=default_days))
        count = _purge_chain(runtime, chain, _midnight(cutoff), moment)
        if count:
            purged[chain] = count
    return purged


def _midnight(moment: datetime) -> datetime:
    return moment.replace(hour=0, minute=0, second=0, microsecond=0)


def _purge_chain(runtime: Runtime, chain: str, cutoff: datetime, now: datetime) -> int:
    with write_transaction(runtime.engine) as conn:
        feed.lock_for_transaction(conn, f"audit-purge:{chain}")
        through = audit.last_seq_before(conn, chain, cutoff)
        anchor = audit.anchor_of(conn, chain)
        if through <= (anchor.through_seq if anchor else 0):
            return 0
        found, problem = audit.verify_prefix(conn, chain, through, runtime.audit_key)
        if found is None:
            record(
                conn,
                runtime,
                None,
                org_id=None,
                action="retention.audit_purge_refused",
                target=chain,
                details={"through_seq": through, "reason": problem},
                actor="retention",
            )
            return 0
        signed = _signed_anchor(runtime, found, anchor, now)
        audit.set_anchor(conn, signed)
        deleted = audit.purge_anchored(conn, chain)
        details = {
            "rows": deleted,
            "through_seq": through,
            "anchor_hash": signed.anchor_hash.hex(),
            "older_than": cutoff.isoformat(),
        }
        _audit_purge(conn, runtime, chain, "retention.purge_audit", details)
    return deleted


def _signed_anchor(
    runtime: Runtime, found: audit.Anchor, previous: audit.Anchor | None, now: datetime
) -> audit.Anchor:
    total = found.purged_rows + (previous.purged_rows if previous else 0)
    unsigned = audit.Anchor(
        chain=found.chain,
        through_seq=found.through_seq,
        anchor_hash=found.anchor_hash,
        anchor_scheme=found.anchor_scheme,
        purged_rows=total,
        anchored_at=audit.format_timestamp(now),
    )
    message = unsigned.message()
    return replace(
        unsigned, mac=runtime.audit_key.mac(message), signature=runtime.audit_key.sign(message)
    )


# --- the round ----------------------------------------------------------------------------------

for _kind in (
    RetentionClass(
        "frames", "frames_days", "crypto-shred (DEK dropped, object deleted)", purge_expired_frames
    ),
    RetentionClass(
        "source_documents",
        "source_documents_days",
        "row (with its DEK) and sealed object deleted",
        purge_source_documents,
    ),
    RetentionClass("request_logs", "request_logs_days", "rows deleted", purge_request_logs),
    RetentionClass(
        "webhook_deliveries",
        "webhook_days",
        "attempts, finished deliveries and events deleted",
        purge_webhook_deliveries,
    ),
    RetentionClass("idempotency", "idempotency_days", "rows deleted", purge_idempotency_records),
    RetentionClass(
        "liveness_challenges",
        "",  # no org setting: a day after the challenge expired
        "rows deleted a day after they expired",
        purge_liveness_challenges,
    ),
    RetentionClass(
        "audit", "audit_days", "oldest rows deleted behind a signed anchor", purge_audit
    ),
    RetentionClass(
        "customer_records",
        "closure_grace_days",
        "org closed: subjects erased, logs deleted, keys destroyed",
        closure.purge_closed_orgs,
    ),
):
    register_class(_kind)


def run_retention(runtime: Runtime, now: datetime | None = None) -> RetentionReport | None:
    """One retention round, on one replica at a time: every class swept, orphaned sealed
    frames deleted, erasures shredded; None when another replica is running it right now.

    The round's totals per class go to the system audit log."""
    with feed.exclusive(runtime.engine, "retention") as mine:
        if not mine:
            return None
        moment = now or utcnow()
        report = RetentionReport()
        for name, kind in list(CLASSES.items()):
            report.purged[name] = kind.sweep(runtime, moment)
        report.orphaned_frames = sweep_orphaned_frames(runtime, moment)
        # Erasures of the last round become unreadable in backups too (app.services.rights).
        shred_erasures(runtime)
        with write_transaction(runtime.engine) as conn:
            record(
                conn,
                runtime,
                None,
                org_id=None,
                action="retention.round",
                target="retention",
                details={
                    "now": moment.isoformat(),
                    "purged": report.totals(),
                    "orgs": {name: len(per_org) for name, per_org in report.purged.items()},
                    "orphaned_frames": report.orphaned_frames,
                },
                actor="retention",
            )
            _report_purges(conn, report)
        return report


def _report_purges(conn: Connection, report: RetentionReport) -> None:
    """Each org's `retention.purged` event: what the round purged of it, per class."""
    per_org: dict[str, dict[str, int]] = {}
    for name, purged in report.purged.items():
        for org_id, count in purged.items():
            if count and org_id != audit.SYSTEM_CHAIN:
                per_org.setdefault(org_id, {})[name] = count
    for org_id, counts in sorted(per_org.items()):
        record_event(conn, org_id, "retention.purged", {"purged": counts})
