"""Who is calling: the org and key an API key proved, and what it may do."""

from __future__ import annotations

from dataclasses import dataclass
from datetime import datetime, timedelta
from typing import Any

from app.crypto import InvalidApiKeyError, Scope, StoredApiKey, authenticate_api_key
from app.errors import ForbiddenError, UnauthorizedError
from app.metrics import AUDIT_WRITE_SECONDS
from app.runtime import Runtime
from app.storage import Connection, audit, orgs, read_transaction, utcnow, write_transaction

# Writing last_used_at on every request would turn each read into a write; a minute of
# resolution is plenty for "is this key still in use?".
LAST_USED_RESOLUTION = timedelta(minutes=1)


@dataclass(frozen=True)
class Principal:
    org_id: str
    key_id: str
    scopes: frozenset[Scope]

    @property
    def actor(self) -> str:
        return f"api_key:{self.key_id}"

    def can(self, scope: Scope) -> bool:
        return scope in self.scopes or Scope.ADMIN in self.scopes


@dataclass(frozen=True)
class KnownKey:
    """An API key as this replica caches it: the stored (hashed) key and when it was last
    used, so that a request writes `last_used_at` at most once per resolution."""

    stored: StoredApiKey
    last_used_at: datetime | None


def authenticate(runtime: Runtime, presented: str, scope: Scope) -> Principal:
    """Resolve a bearer key to a `Principal` holding `scope`; 401/403 errors otherwise.

    The key's row comes from this replica's cache when it can trust it (a revocation on any
    replica reaches it through the change feed); the secret is checked every time. Blocks on
    the database when the key is not cached or its last use is due to be recorded.
    """
    principal = _authenticate(runtime, presented, scope, blocking=True)
    assert principal is not None
    return principal


def authenticate_cached(runtime: Runtime, presented: str, scope: Scope) -> Principal | None:
    """`authenticate`'s answer when this replica's cache alone can give it, without blocking
    (so on the event loop); None when it takes the database."""
    return _authenticate(runtime, presented, scope, blocking=False)


class _NeedsDatabase(Exception):
    pass


def _authenticate(
    runtime: Runtime, presented: str, scope: Scope, *, blocking: bool
) -> Principal | None:
    now = utcnow()
    found: list[KnownKey] = []

    def lookup(key_id: str) -> StoredApiKey | None:
        known = runtime.api_keys.get(key_id)
        if known is None and not blocking:
            raise _NeedsDatabase
        known = known or _load_key(runtime, key_id)
        if known is None:
            return None
        found.append(known)
        return known.stored

    try:
        stored = authenticate_api_key(presented, lookup, now=now)
    except InvalidApiKeyError as exc:
        raise UnauthorizedError("invalid API key") from exc
    except _NeedsDatabase:
        return None
    principal = Principal(stored.org_id, stored.key_id, stored.scopes)
    if not principal.can(scope):
        raise ForbiddenError(f"this API key lacks the `{scope.value}` scope")
    previous = found[0].last_used_at
    if previous is None or now - previous > LAST_USED_RESOLUTION:
        if not blocking:
            return None
        generation = runtime.api_keys.generation()
        with write_transaction(runtime.engine) as conn:
            orgs.touch_api_key(conn, stored.key_id, now)
        runtime.api_keys.put(stored.key_id, KnownKey(stored, now), generation)
    return principal


def _load_key(runtime: Runtime, key_id: str) -> KnownKey | None:
    generation = runtime.api_keys.generation()
    with read_transaction(runtime.engine) as conn:
        row = orgs.find_api_key(conn, key_id)
    if row is None:
        return None  # unknown keys are not cached: a new key works at once
    known = KnownKey(
        StoredApiKey(
            key_id=row.key_id,
            org_id=row.org_id,
            secret_hash=bytes(row.secret_hash),
            scopes=frozenset(Scope(s) for s in row.scopes),
            expires_at=row.expires_at,
            revoked_at=row.revoked_at,
        ),
        row.last_used_at,
    )
    runtime.api_keys.put(key_id, known, generation)
    return known


def record(
    conn: Connection,
    runtime: Runtime,
    principal: Principal | None,
    *,
    org_id: str | None,
    action: str,
    target: str,
    details: dict[str, Any],
    actor: str | None = None,
) -> str:
    """Append the audit row of a change or decision, in the caller's transaction.

    ``org_id`` None writes to the system log, for service-wide events of no one org.

    The actor is the calling key, `actor` when given (e.g. a row written into another org's
    log, which must not learn the caller's key id), or "cli" for operator commands.
    """
    with AUDIT_WRITE_SECONDS.time():
        row = audit.append(
            conn,
            sealer=runtime.cipher,
            chain_key=runtime.audit_key,
            org_id=org_id,
            actor=actor or (principal.actor if principal else "cli"),
            action=action,
            target=target,
            details=details,
        )
    return row.id
