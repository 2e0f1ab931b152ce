"""Who may share faces through a watchlist, decided afresh at every call.

An org is *eligible* in a watchlist when the watchlist is open, its membership is `active`
(it opted in itself, after an invitation; the owner joins at creation), its org setting
`watchlist_sharing` is on and its `data_residency` allows the watchlist's region. Only
eligible orgs may screen, and only eligible contributors' entries are ever screened.
"""

from __future__ import annotations

from app.services.residency import residency_allows
from app.storage import Connection, orgs, watchlists


def eligible_orgs(conn: Connection, watchlist_id: str, region: str | None = None) -> set[str]:
    """Orgs whose entries may be screened, and who may screen, right now; with ``region``
    (the deployment's), only orgs whose residency allows that region too."""
    row = watchlists.find(conn, watchlist_id)
    if row is None or row.status != "open":
        return set()
    default_residency = orgs.DEFAULT_ORG_SETTINGS["data_residency"]
    return {
        m.org_id
        for m in watchlists.active_members_with_settings(conn, watchlist_id)
        if (m.settings or {}).get("watchlist_sharing", False)
        and all(
            residency_allows((m.settings or {}).get("data_residency", default_residency), where)
            for where in (row.region, region or row.region)
        )
    }
