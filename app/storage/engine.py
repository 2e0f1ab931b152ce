"""Engine factory for the metadata store: SQLite (embedded default) or PostgreSQL (psycopg 3).

SQLite is tuned for "nothing acknowledged is lost":

* ``journal_mode=WAL`` lets readers run while one writer commits;
* ``synchronous=FULL`` fsyncs the WAL on every commit, so a 2xx sent after commit survives
  power loss, not only a process crash (WAL's default ``NORMAL`` may lose the last commits);
* ``foreign_keys=ON`` because SQLite leaves them off per connection unless asked;
* ``busy_timeout`` so a second writer waits for the lock instead of failing at once;
* ``recursive_triggers=ON`` so ``INSERT OR REPLACE`` fires DELETE triggers (defence in depth
  for the append-only audit log, which also has an explicit BEFORE INSERT guard).

Every SQLite transaction starts with ``BEGIN IMMEDIATE`` (write lock taken up front). With a
deferred ``BEGIN`` a transaction that reads and then writes fails with ``SQLITE_BUSY`` when
another writer committed in between, and the busy timeout cannot help, because its snapshot
is stale. Read-only work that should not queue behind writers can opt out with
``conn.execution_options(sqlite_deferred=True)`` before the transaction begins, or
:func:`read_only` below.
"""

from __future__ import annotations

import fcntl
import os
from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy import event
from sqlalchemy.engine import URL, Connection, Engine, make_url

DEFAULT_BUSY_TIMEOUT_MS = 10_000
_DEFERRED_OPTION = "sqlite_deferred"


def create_engine_for(
    url: str | URL, *, busy_timeout_ms: int = DEFAULT_BUSY_TIMEOUT_MS, **kwargs: Any
) -> Engine:
    """Build the engine for ``url`` (``sqlite:///path`` or ``postgresql+psycopg://...``).

    A bare ``postgresql://`` URL is routed to psycopg 3, the driver the project ships.
    """
    parsed = make_url(url)
    if parsed.get_backend_name() == "postgresql":
        if parsed.drivername in ("postgresql", "postgres"):
            parsed = parsed.set(drivername="postgresql+psycopg")
        # pre_ping: a restarted server must not hand out dead pooled connections.
        kwargs.setdefault("pool_pre_ping", True)
        return sa.create_engine(parsed, **kwargs)
    if parsed.get_backend_name() != "sqlite":
        raise ValueError(f"unsupported database backend: {parsed.get_backend_name()!r}")
    engine = sa.create_engine(parsed, **kwargs)
    _install_sqlite_pragmas(engine, busy_timeout_ms=busy_timeout_ms)
    return engine


def read_only(conn: Connection) -> Connection:
    """Mark a (not yet begun) SQLite connection to start with a deferred ``BEGIN``.

    No effect on PostgreSQL, where readers never block writers.
    """
    return conn.execution_options(**{_DEFERRED_OPTION: True})


@contextmanager
def read_transaction(engine: Engine) -> Iterator[Connection]:
    """A read-only transaction: on SQLite a deferred BEGIN, so readers never queue behind
    the writer (WAL) and a read nested inside a write transaction cannot deadlock it."""
    with engine.connect() as conn, read_only(conn).begin():
        yield conn


@contextmanager
def write_transaction(engine: Engine) -> Iterator[Connection]:
    """A write transaction (on SQLite ``BEGIN IMMEDIATE``), committed when the block ends
    without an error."""
    with engine.begin() as conn:
        yield conn


def _install_sqlite_pragmas(engine: Engine, *, busy_timeout_ms: int) -> None:
    in_memory = engine.url.database in (None, "", ":memory:")

    @event.listens_for(engine, "connect")
    def _on_connect(dbapi_conn: Any, _record: Any) -> None:
        # Take transaction control away from the sqlite3 module, which would otherwise issue
        # its own deferred BEGIN lazily; the "begin" hook below issues ours.
        dbapi_conn.isolation_level = None
        cursor = dbapi_conn.cursor()
        try:
            cursor.execute(f"PRAGMA busy_timeout = {int(busy_timeout_ms)}")
            if not in_memory:
                cursor.execute("PRAGMA journal_mode = WAL")
            cursor.execute("PRAGMA synchronous = FULL")
            cursor.execute("PRAGMA foreign_keys = ON")
            cursor.execute("PRAGMA recursive_triggers = ON")
        finally:
            cursor.close()

    @event.listens_for(engine, "begin")
    def _on_begin(conn: Connection) -> None:
        deferred = conn.get_execution_options().get(_DEFERRED_OPTION, False)
        conn.exec_driver_sql("BEGIN" if deferred else "BEGIN IMMEDIATE")


def ping(engine: Engine) -> bool:
    """Whether the database answers a trivial query right now (readiness)."""
    try:
        with engine.connect() as conn:
            conn.execute(sa.text("SELECT 1"))
    except sa.exc.SQLAlchemyError:
        return False
    return True


class DatabaseInUseError(RuntimeError):
    """A second server on an SQLite database."""


class DatabaseClaim:
    """An exclusive lock on an SQLite database file held by the serving process."""

    def __init__(self, fd: int) -> None:
        self._fd: int | None = fd

    def release(self) -> None:
        if self._fd is not None:
            os.close(self._fd)  # closing drops the flock
            self._fd = None


def claim_database(engine: Engine) -> DatabaseClaim | None:
    """Make sure this is the only server on an SQLite database (None on PostgreSQL).

    SQLite serves one process: two servers would each hold an index the other's writes never
    reach. Replicas need PostgreSQL. CLI tools beside the server do not claim the database.
    """
    if engine.dialect.name != "sqlite" or engine.url.database in (None, "", ":memory:"):
        return None
    path = f"{engine.url.database}.serving.lock"
    fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
    except BlockingIOError:
        os.close(fd)
        raise DatabaseInUseError(
            f"another wajah server is serving the SQLite database {engine.url.database}: SQLite "
            "serves one process; to run replicas, point every one at PostgreSQL "
            "(WAJAH_DATABASE_URL=postgresql+psycopg://...)"
        ) from None
    return DatabaseClaim(fd)
