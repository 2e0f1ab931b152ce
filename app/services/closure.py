"""Closing an org (`wajah orgs close ORG`): its keys refused at once, its customer records
kept through a grace period (the org's `retention.closure_grace_days`, 365 by default), then
purged and its keys destroyed by the retention round.

At closure, in one transaction: every API key of the org revoked (every replica forgets them
through the change feed), the closure recorded with `purge_after`, an `org.close` row in the
org's audit log and one in the system log. Until `purge_after` nothing is deleted: the
operator can still export or hand over what the org held.

At the purge (`purge_closed_orgs`, a class of `app.services.retention`), resumably: every
subject erased as `DELETE /v1/subjects/{id}` erases one (frames and PII shredded, embeddings
erased, watchlist copies withdrawn, idempotency records deleted), its source documents
deleted (`app.services.onboarding`), the org's request log, remaining idempotency records and
webhooks (endpoints, events, deliveries) deleted, its watchlist memberships left and its own
watchlists closed; an `org.purge` row in the org's log; then every key of the org destroyed
(its KEK versions, its reference key, its subject-key KEK family), after which nothing sealed
for it opens anywhere, backups included; last the receipt, with its SHA-256, in the system
log (`org.purged`) and on the closure row.

What stays: the org row, its revoked keys' hashes, erased subjects' ids and times (as after
any erasure), and its audit rows, for their own 7 years (their details, sealed under the
destroyed KEK, no longer open; the chain still verifies).
"""

from __future__ import annotations

from datetime import datetime, timedelta
from typing import Any

from app.crypto.subject_keys import subject_kek_id
from app.errors import InvalidSettingsError, NotFoundError, OrgClosedError
from app.runtime import Runtime
from app.services import indexing
from app.services.principal import record
from app.services.rights import canonical_sha256
from app.services.subjects import erase_rows, log_erasure
from app.services.text import SERVICE_ID
from app.storage import (
    documents,
    feed,
    orgs,
    read_transaction,
    retention,
    utcnow,
    webhooks,
    write_transaction,
)

#: Subjects erased per transaction while purging a closed org.
PURGE_BATCH = 200


def close_org(
    runtime: Runtime, org_id: str, *, grace_days: int | None = None, now: datetime | None = None
) -> dict[str, Any]:
    """Close ``org_id``: keys revoked now, data purged ``grace_days`` later (default: the
    org's `retention.closure_grace_days`). Returns the receipt (audited in the org's log and
    the system log). A second close is refused (409 `org_closed`)."""
    if grace_days is not None and (type(grace_days) is not int or not 1 <= grace_days <= 3650):
        raise InvalidSettingsError("the grace period is 1..3650 days")
    moment = now or utcnow()
    with write_transaction(runtime.engine) as conn:
        if not SERVICE_ID.fullmatch(org_id) or not orgs.org_exists(conn, org_id):
            raise NotFoundError(f"no org {org_id!r}")
        feed.lock_for_transaction(conn, f"api-keys:{org_id}")
        closed = retention.closure_of(conn, org_id)
        if closed is not None:
            raise OrgClosedError(
                f"org {org_id} was closed at {closed.closed_at.isoformat()}; its data is "
                f"purged after {closed.purge_after.isoformat()}"
            )
        days = grace_days or int(orgs.org_settings(conn, org_id)["retention"]["closure_grace_days"])
        purge_after = moment + timedelta(days=days)
        revoked = retention.revoke_all_api_keys(conn, org_id, moment)
        retention.insert_closure(conn, org_id, moment, purge_after)
        receipt: dict[str, Any] = {
            "org_id": org_id,
            "closed_at": moment.isoformat(),
            "purge_after": purge_after.isoformat(),
            "grace_days": days,
            "api_keys_revoked": sorted(revoked),
        }
        receipt["receipt_sha256"] = canonical_sha256(receipt, leave_out=())
        for chain in (org_id, None):
            record(
                conn,
                runtime,
                None,
                org_id=chain,
                action="org.close",
                target=org_id,
                details=receipt,
            )
        for key_id in revoked:
            feed.announce(conn, "key", key_id)
    for key_id in revoked:
        runtime.api_keys.forget(key_id)
    return receipt


def closure(runtime: Runtime, org_id: str) -> dict[str, Any] | None:
    """The org's closure as recorded (None: open)."""
    with read_transaction(runtime.engine) as conn:
        row = retention.closure_of(conn, org_id) if SERVICE_ID.fullmatch(org_id) else None
    if row is None:
        return None
    return {
        "org_id": row.org_id,
        "closed_at": row.closed_at,
        "purge_after": row.purge_after,
        "purged_at": row.purged_at,
        "receipt_sha256": row.receipt_sha256,
    }


def purge_closed_orgs(runtime: Runtime, now: datetime | None = None) -> dict[str, int]:
    """Purge every closed org whose grace period is over; subjects erased per org."""
    moment = now or utcnow()
    with read_transaction(runtime.engine) as conn:
        due = retention.closures_due(conn, moment)
    purged: dict[str, int] = {}
    for row in due:
        with feed.exclusive(runtime.engine, f"org-purge:{row.org_id}") as mine:
            if mine:
                purged[row.org_id] = purge_org(runtime, row.org_id, moment)["subjects_erased"]
    return purged


def purge_org(runtime: Runtime, org_id: str, now: datetime) -> dict[str, Any]:
    """Erase, delete and destroy what a closed org holds (see the module docstring); the
    receipt. Resumable: a run cut short starts again where it stopped."""
    erased = _erase_all_subjects(runtime, org_id)
    documents_deleted = _delete_all_documents(runtime, org_id)
    with write_transaction(runtime.engine) as conn:
        logs = 0
        while (count := retention.delete_org_request_logs(conn, org_id)) > 0:
            logs += count
        replays = retention.purge_idempotency(conn, org_id, now + timedelta(days=36500))
        left, closed = retention.leave_watchlists(conn, org_id, now)
        hooks = webhooks.delete_org(conn, org_id)  # endpoints are org configuration
        for watchlist_id in {*left, *closed}:
            feed.bump_watchlist(conn, watchlist_id)
        receipt: dict[str, Any] = {
            "org_id": org_id,
            "purged_at": now.isoformat(),
            "subjects_erased": erased,
            "source_documents_deleted": documents_deleted,
            "request_log_rows_deleted": logs,
            "idempotency_records_deleted": replays,
            "watchlists_left": left,
            "watchlists_closed": closed,
            "webhook_endpoints_deleted": hooks["webhook_endpoints"],
            "webhook_events_deleted": hooks["webhook_events"],
        }
        if runtime.kms.has_org(org_id):  # its own log, while its key still seals
            record(
                conn,
                runtime,
                None,
                org_id=org_id,
                action="org.purge",
                target=org_id,
                details=receipt,
                actor="retention",
            )
    for watchlist_id in {*left, *closed}:
        indexing.refresh_watchlist(runtime, watchlist_id)
    receipt["keys_destroyed"] = _destroy_keys(runtime, org_id)
    receipt["receipt_sha256"] = canonical_sha256(receipt, leave_out=())
    with write_transaction(runtime.engine) as conn:
        record(
            conn,
            runtime,
            None,
            org_id=None,
            action="org.purged",
            target=org_id,
            details=receipt,
            actor="retention",
        )
        retention.mark_org_purged(conn, org_id, now, receipt["receipt_sha256"])
    return receipt


def _erase_all_subjects(runtime: Runtime, org_id: str) -> int:
    erased = 0
    while True:
        frame_keys: list[str] = []
        watchlists: set[str] = set()
        with write_transaction(runtime.engine) as conn:
            batch = retention.live_subject_ids(conn, org_id, PURGE_BATCH)
            for subject_id in batch:
                receipt, frame_rows, withdrawn_from = erase_rows(conn, org_id, subject_id)
                log_erasure(conn, org_id, subject_id, receipt)  # a restore erases it again
                frame_keys += [f.object_key for f in frame_rows]
                watchlists.update(withdrawn_from)
        for key in frame_keys:  # after commit, as an erasure does
            runtime.objects.delete(key)
        for watchlist_id in watchlists:
            indexing.refresh_watchlist(runtime, watchlist_id)
        erased += len(batch)
        if len(batch) < PURGE_BATCH:
            break
    if erased:
        indexing.catch_up_org(runtime, org_id)
    return erased


def _delete_all_documents(runtime: Runtime, org_id: str) -> int:
    """The org's source documents not tied to a subject (its subjects' went with them)."""
    deleted = 0
    while True:
        with write_transaction(runtime.engine) as conn:
            keys = documents.delete_org_documents(conn, org_id)
        for key in keys:  # after commit, as an erasure does
            runtime.objects.delete(key)
        deleted += len(keys)
        if len(keys) < documents.BATCH:
            return deleted


def _destroy_keys(runtime: Runtime, org_id: str) -> list[str]:
    """Destroy every key the org has in the key manager; which families were destroyed now."""
    destroyed = []
    for family in (subject_kek_id(org_id), org_id):
        if runtime.kms.has_org(family):
            runtime.kms.destroy_org(family)
            destroyed.append(family)
    return destroyed
