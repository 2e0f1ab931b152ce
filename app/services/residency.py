"""Data residency, enforced: an org is served, written and screened only by a deployment
whose region (`WAJAH_REGION`, an ISO 3166-1 alpha-2 code checked at start) its
`data_residency` allows.

`ID-only` (the default) allows `ID` alone; `any` allows every region. A deployment does not
refuse to start over an org it may not serve (it serves the others); it names each such org
in its log at start, and refuses every request of the org with 403 `residency_mismatch`
(right after the API key's check, before any read or write), and every write on its behalf
from the command line. Shared watchlists check both sides at every call: the screening org
through its request, and each contributing org's entries against the watchlist's region
*and* this deployment's (`app.services.sharing.eligible_orgs`).
"""

from __future__ import annotations

import logging
from collections.abc import Mapping
from typing import Any

from app.errors import ForbiddenError
from app.runtime import Runtime
from app.storage import orgs, read_transaction, retention

log = logging.getLogger("wajah")

# "ID-only": data stays in Indonesia (the deployment's region must be ID); "any": no limit.
DATA_RESIDENCIES = ("ID-only", "any")


def residency_allows(residency: str, region: str) -> bool:
    return residency == "any" or (residency == "ID-only" and region == "ID")


class ResidencyMismatchError(ForbiddenError):
    code = "residency_mismatch"


def residency_of(settings: Mapping[str, Any]) -> str:
    return str(settings.get("data_residency", orgs.DEFAULT_ORG_SETTINGS["data_residency"]))


def check_served(region: str, org_id: str, settings: Mapping[str, Any]) -> None:
    """ResidencyMismatchError unless an org with ``settings`` may be served in ``region``."""
    residency = residency_of(settings)
    if not residency_allows(residency, region):
        raise ResidencyMismatchError(
            f"org {org_id} keeps its data {residency} (data_residency), and this deployment is "
            f"in region {region}: use the org's deployment in its own region",
            region=region,
            data_residency=residency,
        )


def require_served(
    runtime: Runtime, org_id: str, settings: Mapping[str, Any] | None = None
) -> None:
    """`check_served` for this deployment, with the org's settings as given, else from this
    replica's cache, else from the database (blocks then)."""
    if settings is None:
        settings = runtime.org_settings.get(org_id)
    if settings is None:
        with read_transaction(runtime.engine) as conn:
            settings = orgs.org_settings(conn, org_id)
    check_served(runtime.settings.region, org_id, settings)


def refused_orgs(runtime: Runtime) -> list[str]:
    """Orgs this deployment may not serve, each named in the log (called at start)."""
    region = runtime.settings.region
    with read_transaction(runtime.engine) as conn:
        every = retention.all_org_settings(conn)
    refused = sorted(o for o, s in every.items() if not residency_allows(residency_of(s), region))
    for org_id in refused:
        log.error(
            "org %s: its data_residency forbids region %s; every request of it is refused "
            "with 403 residency_mismatch",
            org_id,
            region,
        )
    return refused
