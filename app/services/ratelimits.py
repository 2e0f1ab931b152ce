"""An org's rate limit: the operator's override of the service-wide default.

Kept in the org's settings document as `rate_limit` (`{"per_second": float, "burst": int}`
or absent), shared by replicas through the database and the change feed like every other
setting, but set only from the command line (`wajah orgs rate-limit`): the API refuses the
field, so a tenant cannot raise its own limit.
"""

from __future__ import annotations

from typing import Any

from app.errors import InvalidSettingsError, NotFoundError
from app.runtime import Runtime
from app.services.principal import record
from app.storage import feed, orgs, write_transaction

MAX_PER_SECOND = 100_000.0


def set_rate_limit(
    runtime: Runtime, org_id: str, per_second: float | None, burst: int | None
) -> dict[str, Any] | None:
    """Set (or with `per_second` None, remove) the org's override; audited in its log."""
    limit: dict[str, Any] | None = None
    if per_second is not None:
        if not 0 <= per_second <= MAX_PER_SECOND:
            raise InvalidSettingsError(f"per_second must be within 0..{MAX_PER_SECOND:g}")
        burst = burst if burst is not None else max(1, round(per_second * 2))
        if not 1 <= burst <= 10 * MAX_PER_SECOND:
            raise InvalidSettingsError("burst must be at least 1")
        limit = {"per_second": float(per_second), "burst": int(burst)}
    with write_transaction(runtime.engine) as conn:
        if not orgs.org_exists(conn, org_id):
            raise NotFoundError(f"no org {org_id!r}")
        feed.lock_for_transaction(conn, f"settings:{org_id}")
        current = orgs.org_settings(conn, org_id)
        updated = {k: v for k, v in current.items() if k != "rate_limit"}
        if limit is not None:
            updated["rate_limit"] = limit
        orgs.save_org_settings(conn, org_id, updated)
        record(
            conn,
            runtime,
            None,
            org_id=org_id,
            action="org.rate_limit.set",
            target=org_id,
            details={"rate_limit": limit},
        )
        feed.announce(conn, "cfg", org_id)
    runtime.org_settings.forget(org_id)
    return limit
