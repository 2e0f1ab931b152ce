"""Organisations, their API keys and their settings."""

from __future__ import annotations

import copy
import re
from dataclasses import dataclass
from datetime import datetime
from typing import Any

from app.crypto import Scope, generate_api_key
from app.errors import (
    ApiKeyNotFoundError,
    InvalidSettingsError,
    LastAdminKeyError,
    NotFoundError,
    OrgClosedError,
    OwnKeyRevocationError,
)
from app.runtime import Runtime
from app.services import indexing, pages
from app.services.liveness import changed_liveness_settings
from app.services.principal import Principal, record
from app.services.residency import DATA_RESIDENCIES, check_served, residency_allows
from app.services.text import SERVICE_ID, check_text
from app.storage import (
    AuditEntry,
    AuditPage,
    Connection,
    audit,
    feed,
    orgs,
    read_transaction,
    retention,
    utcnow,
    watchlists,
    write_transaction,
)
from app.storage.webhooks import record_event

# How far an org may move the match threshold from the pack's calibrated one. Lower means
# more false matches: never more than 0.05 below the pack's value; higher only costs
# convenience, up to 0.95.
THRESHOLD_BELOW_PACK = 0.05
THRESHOLD_MAX = 0.95
DUPLICATE_POLICIES = ("off", "flag", "reject")


# Key ids are lowercase base32 (app.crypto.generate_api_key).
KEY_ID = re.compile(r"[a-z0-9]{1,40}")


@dataclass(frozen=True)
class IssuedKey:
    key_id: str
    plaintext: str
    scopes: list[str]
    name: str
    expires_at: datetime | None


def create_org(
    runtime: Runtime, name: str, data_residency: str | None = None
) -> tuple[str, IssuedKey]:
    """Create an org with its keys in the KMS and a first admin key (shown once).

    ``data_residency`` (default `ID-only`) must allow this deployment's region: an org this
    deployment would refuse is not made here."""
    name = check_text(name, "an org name").strip()
    if not 1 <= len(name) <= 200:
        raise InvalidSettingsError("an org name is 1..200 characters")
    residency = data_residency or orgs.DEFAULT_ORG_SETTINGS["data_residency"]
    _check_residency(runtime, residency)
    with write_transaction(runtime.engine) as conn:
        org_id = orgs.insert_org(conn, name=name, settings={"data_residency": residency})
        # The KEK must exist before the audit row below can be sealed under it.
        runtime.kms.create_org(org_id)
        record(
            conn,
            runtime,
            None,
            org_id=org_id,
            action="org.create",
            target=org_id,
            details={"name": name},
        )
        key = _insert_key(conn, runtime, None, org_id, "first admin key", [Scope.ADMIN], None)
    return org_id, key


def _insert_key(
    conn: Connection,
    runtime: Runtime,
    principal: Principal | None,
    org_id: str,
    name: str,
    scopes: list[Scope],
    expires_at: datetime | None,
) -> IssuedKey:
    check_text(name, "a key name")
    if not 1 <= len(name) <= 200:
        raise InvalidSettingsError("a key name is 1..200 characters")
    generated = generate_api_key()
    orgs.insert_api_key(
        conn,
        key_id=generated.key_id,
        org_id=org_id,
        secret_hash=generated.secret_hash,
        scopes=[s.value for s in scopes],
        name=name,
        expires_at=expires_at,
    )
    record(
        conn,
        runtime,
        principal,
        org_id=org_id,
        action="api_key.create",
        target=generated.key_id,
        details={"name": name, "scopes": sorted(scopes)},
    )
    return IssuedKey(generated.key_id, generated.plaintext, sorted(scopes), name, expires_at)


def issue_api_key(
    runtime: Runtime,
    principal: Principal,
    name: str,
    scopes: list[Scope],
    expires_at: datetime | None,
) -> IssuedKey:
    _check_expiry(expires_at)
    with write_transaction(runtime.engine) as conn:
        return _insert_key(conn, runtime, principal, principal.org_id, name, scopes, expires_at)


def issue_operator_key(
    runtime: Runtime,
    org_id: str,
    name: str,
    scopes: list[Scope],
    expires_at: datetime | None,
) -> IssuedKey:
    """A key issued by an operator on the command line (audited as `cli`), not by an API
    caller: how an org whose admin keys are all gone or expired gets one back."""
    _check_expiry(expires_at)
    if not scopes:
        raise InvalidSettingsError("name at least one scope")
    with write_transaction(runtime.engine) as conn:
        if not SERVICE_ID.fullmatch(org_id) or not orgs.org_exists(conn, org_id):
            raise NotFoundError(f"no org {org_id!r}")
        if retention.closure_of(conn, org_id) is not None:
            raise OrgClosedError(f"org {org_id} is closed: it gets no new keys")
        check_served(runtime.settings.region, org_id, orgs.org_settings(conn, org_id))
        return _insert_key(conn, runtime, None, org_id, name, scopes, expires_at)


def _check_residency(runtime: Runtime, residency: Any) -> None:
    if residency not in DATA_RESIDENCIES:
        raise InvalidSettingsError(f"data_residency must be one of {DATA_RESIDENCIES}")
    region = runtime.settings.region
    if not residency_allows(residency, region):
        raise InvalidSettingsError(
            f"data_residency {residency!r} forbids this deployment's region {region}: the org "
            "would be refused here (set it from a deployment in the region it allows)"
        )


def _check_expiry(expires_at: datetime | None) -> None:
    if expires_at is not None and expires_at.tzinfo is None:
        raise InvalidSettingsError("expires_at needs a UTC offset, e.g. 2027-01-01T00:00:00Z")
    if expires_at is not None and expires_at <= utcnow():
        raise InvalidSettingsError("expires_at must be in the future")


def list_api_keys(runtime: Runtime, principal: Principal) -> list[dict[str, Any]]:
    with read_transaction(runtime.engine) as conn:
        rows = orgs.org_api_keys(conn, principal.org_id)
    return [
        {
            "key_id": r.key_id,
            "name": r.name,
            "scopes": list(r.scopes),
            "created_at": r.created_at,
            "expires_at": r.expires_at,
            "revoked_at": r.revoked_at,
            "last_used_at": r.last_used_at,
        }
        for r in rows
    ]


def api_keys_page(
    runtime: Runtime, principal: Principal, limit: int = 50, cursor: str | None = None
) -> tuple[list[dict[str, Any]], str | None]:
    """One page of the org's keys, oldest first (an org holds tens, read whole)."""
    return pages.page_of(
        list_api_keys(runtime, principal),
        limit,
        cursor,
        lambda k: pages.text_id_position(k["created_at"], k["key_id"]),
    )


def revoke_api_key(runtime: Runtime, principal: Principal, key_id: str) -> None:
    """Revoke one of the org's keys, never in a way that locks the org out: not the calling
    key itself, not the last working admin key (checked under the org's key lock, so two
    admins revoking each other on two replicas cannot both succeed)."""
    if not KEY_ID.fullmatch(key_id):  # e.g. NUL bytes, which PostgreSQL refuses to compare
        raise ApiKeyNotFoundError(f"no API key {key_id!r}")
    if key_id == principal.key_id:
        raise OwnKeyRevocationError(
            "an API key cannot revoke itself; revoke it with another admin key"
        )
    with write_transaction(runtime.engine) as conn:
        feed.lock_for_transaction(conn, f"api-keys:{principal.org_id}")
        _keep_an_admin(conn, principal.org_id, revoking=key_id)
        revoked = orgs.revoke_api_key(conn, principal.org_id, key_id, utcnow())
        if revoked is None:
            raise ApiKeyNotFoundError(f"no API key {key_id!r}")
        if not revoked:
            return  # revoking twice is a no-op, not an error (safe retries)
        record(
            conn,
            runtime,
            principal,
            org_id=principal.org_id,
            action="api_key.revoke",
            target=key_id,
            details={},
        )
        feed.announce(conn, "key", key_id)
    runtime.api_keys.forget(key_id)


def _keep_an_admin(conn: Connection, org_id: str, *, revoking: str) -> None:
    now = utcnow()
    working_admins = {
        r.key_id
        for r in orgs.org_api_keys(conn, org_id)
        if Scope.ADMIN.value in r.scopes
        and r.revoked_at is None
        and (r.expires_at is None or r.expires_at > now)
    }
    if revoking in working_admins and working_admins == {revoking}:
        raise LastAdminKeyError(
            "this is the org's last working admin key; issue another admin key first "
            "(or, locked out, `wajah keys issue --org ID --scopes admin`)"
        )


# --- settings -------------------------------------------------------------------------------


def org_settings(runtime: Runtime, org_id: str) -> dict[str, Any]:
    """The org's settings (a copy the caller may change), from this replica's cache when it
    can trust it (see `ReplicaCache`)."""
    settings = cached_org_settings(runtime, org_id)
    if settings is None:
        generation = runtime.org_settings.generation()
        with read_transaction(runtime.engine) as conn:
            settings = orgs.org_settings(conn, org_id)
        runtime.org_settings.put(org_id, settings, generation)
        settings = copy.deepcopy(settings)
    return settings


def cached_org_settings(runtime: Runtime, org_id: str) -> dict[str, Any] | None:
    """`org_settings` when this replica's cache holds them, without blocking; None otherwise."""
    cached = runtime.org_settings.get(org_id)
    return None if cached is None else copy.deepcopy(cached)


def effective_threshold(runtime: Runtime, settings: dict[str, Any]) -> tuple[float, str]:
    """The cosine threshold an org's decisions use, and where it came from."""
    if settings.get("threshold") is not None:
        source = settings.get("threshold_calibration") or "org setting"
        return float(settings["threshold"]), f"org: {source}"
    pack = runtime.pipeline.pack
    return pack.thresholds.cosine, f"model pack {pack.model_id}: {pack.thresholds.source}"


def threshold_bounds(runtime: Runtime) -> tuple[float, float]:
    return (
        round(runtime.pipeline.threshold - THRESHOLD_BELOW_PACK, 4),
        THRESHOLD_MAX,
    )


def update_org_settings(
    runtime: Runtime, principal: Principal, changes: dict[str, Any]
) -> dict[str, Any]:
    """Apply a partial update after validating every field; nothing changes on error.

    Read, changed and written in one transaction under the org's settings lock, so two
    replicas changing different fields at once both keep their change.
    """
    org_id = principal.org_id
    with write_transaction(runtime.engine) as conn:
        feed.lock_for_transaction(conn, f"settings:{org_id}")
        current = orgs.org_settings(conn, org_id)
        updated = _changed_settings(runtime, current, changes)
        if updated == current:
            return current
        orgs.save_org_settings(conn, org_id, updated)
        changed = sorted(k for k in updated if updated.get(k) != current.get(k))
        record(
            conn,
            runtime,
            principal,
            org_id=org_id,
            action="org.settings.update",
            target=org_id,
            details={"changed": changed, "new": {k: updated[k] for k in changed}},
        )
        record_event(conn, org_id, "org.settings.changed", {"changed": changed})
        feed.announce(conn, "cfg", org_id)
        # Turning sharing off (or a residency that no longer allows a watchlist's region)
        # takes the org's entries out of screening at once, and back in when it is undone.
        sharing_moved = any(
            updated[k] != current[k] for k in ("watchlist_sharing", "data_residency")
        )
        moved = watchlists.watchlists_of(conn, org_id) if sharing_moved else []
        for watchlist_id in moved:
            feed.bump_watchlist(conn, watchlist_id)
    runtime.org_settings.forget(org_id)
    for watchlist_id in moved:
        indexing.refresh_watchlist(runtime, watchlist_id)
    return updated


def _changed_settings(
    runtime: Runtime, current: dict[str, Any], changes: dict[str, Any]
) -> dict[str, Any]:
    """`current` with `changes` applied, every field validated (InvalidSettingsError)."""
    updated = copy.deepcopy(current)
    if "threshold" in changes:
        threshold = changes["threshold"]
        if threshold is not None:
            low, high = threshold_bounds(runtime)
            if not low <= float(threshold) <= high:
                raise InvalidSettingsError(
                    f"threshold must be within [{low}, {high}] for model pack "
                    f"{runtime.model_id} (its calibrated value is {runtime.pipeline.threshold})",
                    bounds=[low, high],
                )
            threshold = float(threshold)
        updated["threshold"] = threshold
        calibration = changes.get("threshold_calibration")
        if calibration is not None:
            check_text(calibration, "threshold_calibration")
        updated["threshold_calibration"] = calibration
    if "duplicate_policy" in changes:
        if changes["duplicate_policy"] not in DUPLICATE_POLICIES:
            raise InvalidSettingsError(f"duplicate_policy must be one of {DUPLICATE_POLICIES}")
        updated["duplicate_policy"] = changes["duplicate_policy"]
    if "retention" in changes:
        retention = dict(updated.get("retention") or {})
        for field, value in (changes["retention"] or {}).items():
            if field not in orgs.RETENTION_LIMITS:
                raise InvalidSettingsError(f"unknown retention field {field!r}")
            low, high = orgs.RETENTION_LIMITS[field]
            if type(value) is not int or not low <= value <= high:
                raise InvalidSettingsError(f"retention.{field} must be {low}..{high} days")
            retention[field] = value
        updated["retention"] = retention
    if "liveness" in changes:
        updated["liveness"] = changed_liveness_settings(
            updated.get("liveness") or {}, changes["liveness"]
        )
    if "watchlist_sharing" in changes:
        updated["watchlist_sharing"] = bool(changes["watchlist_sharing"])
    if "data_residency" in changes:
        _check_residency(runtime, changes["data_residency"])
        updated["data_residency"] = changes["data_residency"]
    return updated


# --- audit ----------------------------------------------------------------------------------


def audit_events_page(
    runtime: Runtime, principal: Principal, limit: int = 50, cursor: str | None = None
) -> tuple[list[AuditEntry], str | None]:
    """One page of the org's audit rows, newest first; the cursor holds the sequence number
    to page below."""
    below = pages.decode(cursor)[0] if cursor is not None else None
    if below is not None and below < 1:
        return [], None
    page = audit_page(runtime, principal, below, limit)
    next_cursor = pages.encode(page.next_cursor, b"") if page.next_cursor is not None else None
    return page.entries, next_cursor


def audit_page(runtime: Runtime, principal: Principal, cursor: int | None, limit: int) -> AuditPage:
    """The org's own audit rows, newest first, details opened."""
    with read_transaction(runtime.engine) as conn:
        return audit.list_audit(
            conn, sealer=runtime.cipher, org_id=principal.org_id, cursor=cursor, limit=limit
        )
