"""Organisations, their settings and their API keys (stored only as hashes)."""

from __future__ import annotations

import copy
from collections.abc import Mapping, Sequence
from datetime import datetime
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection

from app.storage.ids import new_id
from app.storage.schema import api_keys, orgs, utcnow

DEFAULT_ORG_SETTINGS: dict[str, Any] = {
    # None: use the model pack's calibrated threshold.
    "threshold": None,
    "duplicate_policy": "off",
    # Days each data class is kept (app.services.retention; README "Retention").
    "retention": {
        "frames_days": 90,
        "request_logs_days": 90,
        "webhook_days": 30,
        "idempotency_days": 1,
        "audit_days": 2557,  # 7 years, leap days included
        "closure_grace_days": 365,  # customer records after the org closes
        "source_documents_days": 90,  # ID images from POST /v1/compare
    },
    "watchlist_sharing": False,
    "data_residency": "ID-only",
    # Passive/active liveness (app.services.liveness); off until calibrated.
    "liveness": {"policy": "off", "passive_threshold": 0.1826, "require_challenge": False},
}

# What an org may set each retention period to, in days: the audit log is kept at least the
# 7 years the law asks; nothing else is kept past 10 years.
RETENTION_LIMITS: dict[str, tuple[int, int]] = {
    "frames_days": (1, 3650),
    "request_logs_days": (1, 3650),
    "webhook_days": (1, 3650),
    "idempotency_days": (1, 3650),
    "audit_days": (2557, 36500),
    "closure_grace_days": (1, 3650),
    "source_documents_days": (1, 3650),
}


def insert_org(
    conn: Connection,
    *,
    name: str,
    settings: Mapping[str, Any] | None = None,
    now: datetime | None = None,
) -> str:
    org_id = new_id("org")
    merged = copy.deepcopy(DEFAULT_ORG_SETTINGS)
    merged.update(settings or {})
    conn.execute(
        sa.insert(orgs).values(id=org_id, name=name, settings=merged, created_at=now or utcnow())
    )
    return org_id


def org_exists(conn: Connection, org_id: str) -> bool:
    return conn.execute(sa.select(orgs.c.id).where(orgs.c.id == org_id)).first() is not None


def org_ids(conn: Connection) -> list[str]:
    return [str(r) for r in conn.execute(sa.select(orgs.c.id)).scalars()]


# Built once: most requests read the settings.
_ORG_SETTINGS = sa.select(orgs.c.settings).where(orgs.c.id == sa.bindparam("org_id"))


def org_settings(conn: Connection, org_id: str) -> dict[str, Any]:
    """The org's settings over the defaults (a fresh copy the caller may change)."""
    value = conn.execute(_ORG_SETTINGS, {"org_id": org_id}).scalar_one()
    merged = copy.deepcopy(DEFAULT_ORG_SETTINGS)
    merged.update(value or {})
    return merged


def save_org_settings(conn: Connection, org_id: str, settings: Mapping[str, Any]) -> None:
    conn.execute(sa.update(orgs).where(orgs.c.id == org_id).values(settings=dict(settings)))


# --- API keys -------------------------------------------------------------------------------


def insert_api_key(
    conn: Connection,
    *,
    key_id: str,
    org_id: str,
    secret_hash: bytes,
    scopes: Sequence[str],
    name: str,
    expires_at: datetime | None,
) -> None:
    conn.execute(
        sa.insert(api_keys).values(
            key_id=key_id,
            org_id=org_id,
            secret_hash=secret_hash,
            scopes=sorted(scopes),
            name=name,
            expires_at=expires_at,
            created_at=utcnow(),
        )
    )


# Built once: every request runs it, and building it per call cost more than the read.
_KEY_BY_ID = sa.select(api_keys).where(api_keys.c.key_id == sa.bindparam("key_id"))


def find_api_key(conn: Connection, key_id: str) -> Any:
    """The key's row (every column, with its secret's hash), or None."""
    return conn.execute(_KEY_BY_ID, {"key_id": key_id}).first()


def touch_api_key(conn: Connection, key_id: str, now: datetime) -> None:
    conn.execute(sa.update(api_keys).where(api_keys.c.key_id == key_id).values(last_used_at=now))


def org_api_keys(conn: Connection, org_id: str) -> list[Any]:
    """The org's keys, oldest first (every column)."""
    return list(
        conn.execute(
            sa.select(api_keys)
            .where(api_keys.c.org_id == org_id)
            .order_by(api_keys.c.created_at, api_keys.c.key_id)
        )
    )


def revoke_api_key(conn: Connection, org_id: str, key_id: str, now: datetime) -> bool | None:
    """Revoke the org's key: True if revoked now, False if it already was, None if the org
    has no such key."""
    row = conn.execute(
        sa.select(api_keys.c.revoked_at).where(
            api_keys.c.key_id == key_id, api_keys.c.org_id == org_id
        )
    ).first()
    if row is None:
        return None
    if row.revoked_at is not None:
        return False
    conn.execute(sa.update(api_keys).where(api_keys.c.key_id == key_id).values(revoked_at=now))
    return True
