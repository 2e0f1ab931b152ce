"""The change feed: positions in the database, and notifications when they move.

Every change to what an index namespace holds moves a position in the same transaction:
an org's enrollment seq (``org_counters``, see `app.storage.subjects`) or a watchlist's
``change_seq``. Positions are taken under a row lock held until commit, so they become
visible in increasing order: a reader that has applied everything up to position P and then
applies ``> P`` misses nothing.

On PostgreSQL each such transaction also sends a notification on ``CHANNEL`` (delivered at
commit, de-duplicated within a transaction), which wakes the other replicas; its payload
names what moved:

    org:<org_id>        an org's enrollments (enrolled, retired, erased)
    wl:<watchlist_id>   a watchlist's entries, memberships or members' sharing
    cfg:<org_id>        an org's settings
    key:<key_id>        an API key (revoked)
    keys:<name>         the key manager's state (a KEK rotated, disabled or destroyed)
    wh:due              webhook deliveries became due (wakes the delivery workers)

Notifications only wake; positions decide. A replica that missed some (its listening
connection dropped) catches up by comparing positions when it reconnects.
"""

from __future__ import annotations

import contextlib
import hashlib
from collections.abc import Iterator
from typing import Any

import sqlalchemy as sa
from sqlalchemy.engine import Connection, Engine

from app.storage.schema import org_counters, watchlists

CHANNEL = "wajah_feed"
_NOTIFY = sa.text("SELECT pg_notify(:channel, :payload)")


def announce(conn: Connection, kind: str, ident: str) -> None:
    """Tell the other replicas, at commit, that ``kind:ident`` moved (no-op on SQLite,
    which serves one process)."""
    if conn.dialect.name == "postgresql":
        conn.execute(_NOTIFY, {"channel": CHANNEL, "payload": f"{kind}:{ident}"})


def org_positions(conn: Connection) -> dict[str, int]:
    """Every org's enrollment position (orgs that never enrolled are at 0 and absent)."""
    rows = conn.execute(sa.select(org_counters.c.org_id, org_counters.c.enrollment_seq))
    return {str(org_id): int(seq) for org_id, seq in rows}


def watchlist_position(conn: Connection, watchlist_id: str) -> int:
    value = conn.execute(
        sa.select(watchlists.c.change_seq).where(watchlists.c.id == watchlist_id)
    ).scalar_one_or_none()
    return int(value or 0)


def watchlist_positions(conn: Connection) -> dict[str, int]:
    rows = conn.execute(sa.select(watchlists.c.id, watchlists.c.change_seq))
    return {str(w): int(seq) for w, seq in rows}


def bump_watchlist(conn: Connection, watchlist_id: str) -> int:
    """Move a watchlist's position (locks its row until commit) and announce it."""
    seq = conn.execute(
        sa.update(watchlists)
        .where(watchlists.c.id == watchlist_id)
        .values(change_seq=watchlists.c.change_seq + 1)
        .returning(watchlists.c.change_seq)
    ).scalar_one()
    announce(conn, "wl", watchlist_id)
    return int(seq)


# --- advisory locks -----------------------------------------------------------------------


def _lock_key(name: str) -> int:
    """A stable signed 64-bit key for PostgreSQL's advisory locks."""
    return int.from_bytes(hashlib.sha256(name.encode()).digest()[:8], "big", signed=True)


def lock_for_transaction(conn: Connection, name: str) -> None:
    """Serialise transactions on ``name`` across replicas until this one ends.

    On SQLite every write transaction already holds the database's write lock.
    """
    if conn.dialect.name == "postgresql":
        conn.execute(sa.text("SELECT pg_advisory_xact_lock(:key)"), {"key": _lock_key(name)})


# --- listening ------------------------------------------------------------------------------


class Listener:
    """A dedicated PostgreSQL connection that LISTENs on `CHANNEL`.

    `wait(timeout)` blocks on the socket (no polling of the database) and returns the
    payloads that arrived; a broken connection raises `sqlalchemy.exc.DBAPIError` or
    `OSError` and the caller reconnects with a new `Listener`.
    """

    def __init__(self, engine: Engine) -> None:
        self._raw = engine.raw_connection()
        connection: Any = self._raw.driver_connection
        self._conn = connection
        self._conn.autocommit = True
        self._conn.execute(f"LISTEN {CHANNEL}")

    def wait(self, timeout: float) -> list[str]:
        payloads = [n.payload for n in self._conn.notifies(timeout=timeout, stop_after=1)]
        # Whatever else arrived with it, without blocking again.
        payloads += [n.payload for n in self._conn.notifies(timeout=0)]
        return payloads

    def close(self) -> None:
        # Never back to the pool: it is LISTENing. Closing a broken connection may fail too.
        with contextlib.suppress(Exception):
            self._raw.invalidate()


@contextlib.contextmanager
def exclusive(engine: Engine, name: str) -> Iterator[bool]:
    """Run a job on one replica at a time: yields True if this process holds ``name`` (until
    the block ends, or the process dies), False if another one does.

    PostgreSQL: a session advisory lock on a connection of its own. SQLite: one server
    process, so always True.
    """
    if engine.dialect.name != "postgresql":
        yield True
        return
    key = _lock_key(name)
    with engine.connect() as conn:
        held = bool(
            conn.execute(sa.text("SELECT pg_try_advisory_lock(:key)"), {"key": key}).scalar()
        )
        conn.commit()
        try:
            yield held
        finally:
            if held:
                conn.execute(sa.text("SELECT pg_advisory_unlock(:key)"), {"key": key})
                conn.commit()
