"""The key manager's state document as a row of the metadata database (`keyring_state`).

`app.crypto.kms` keeps its bookkeeping — per-org KEK versions (wrapped under the root key, or
handles of keys held in the HSM), primary, minimum decryption version, wrap reservations,
reference keys — in one JSON document behind the `app.crypto.KeyringStore` protocol. In the
database, every replica that shares it (and the root key, or the token) shares the keys, and
so does the CLI beside them; a database backup holds the wrapped keys.

Exclusion: `mutate` is one write transaction. On PostgreSQL it locks the row with
`SELECT ... FOR UPDATE`; on SQLite `BEGIN IMMEDIATE` has taken the database's write lock. The
first writer inserts with `ON CONFLICT DO NOTHING` (on PostgreSQL that waits for a concurrent
first insert to commit) and the loser locks the winner's row, so two replicas starting on an
empty database end up with one document.

On SQLite, do not call `mutate` from a thread that holds a write transaction on the same
database: each would wait for the other. The service uses this store only on PostgreSQL.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator
from contextlib import contextmanager
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Engine

from app.crypto.keyring_store import StateDocument, decode_state, encode_state
from app.storage import feed
from app.storage.engine import read_transaction, write_transaction
from app.storage.schema import keyring_state, utcnow

DEFAULT_KEYRING_NAME = "keyring"


class DatabaseKeyringStore:
    """The row of `keyring_state` called ``name``: one key manager's state document."""

    def __init__(self, engine: Engine, name: str = DEFAULT_KEYRING_NAME) -> None:
        if not 1 <= len(name) <= 64:
            raise ValueError("a keyring name has 1 to 64 characters")
        self._engine = engine
        self.name = name

    @property
    def location(self) -> str:
        # Not the URL: it may carry a password.
        return f"keyring_state row {self.name!r} in the {self._engine.dialect.name} database"

    def _select(self, *, lock: bool) -> sa.Select[Any]:
        stmt = sa.select(keyring_state.c.state).where(keyring_state.c.name == self.name)
        # SQLite renders no FOR UPDATE: its BEGIN IMMEDIATE already holds the write lock.
        return stmt.with_for_update() if lock else stmt

    def _insert(self, conn: Connection, text: str) -> bool:
        """Insert the first document; False when a concurrent first insert won."""
        values = {"name": self.name, "state": text, "updated_at": utcnow()}
        stmt: sa.Insert
        if conn.dialect.name == "postgresql":
            stmt = postgresql.insert(keyring_state).values(values).on_conflict_do_nothing()
        else:
            stmt = sqlite.insert(keyring_state).values(values).on_conflict_do_nothing()
        return conn.execute(stmt.returning(keyring_state.c.name)).first() is not None

    def load(self) -> StateDocument | None:
        with read_transaction(self._engine) as conn:
            text = conn.execute(self._select(lock=False)).scalar_one_or_none()
        return None if text is None else decode_state(text, self.location)

    @contextmanager
    def mutate(self, create: Callable[[], StateDocument]) -> Iterator[StateDocument]:
        with write_transaction(self._engine) as conn:
            stored = conn.execute(self._select(lock=True)).scalar_one_or_none()
            if stored is None:
                fresh = encode_state(create())
                if self._insert(conn, fresh):
                    stored = fresh
                else:  # the winner has committed by now: lock its row
                    stored = conn.execute(self._select(lock=True)).scalar_one()
            state = decode_state(stored, self.location)
            yield state
            text = encode_state(state)
            if text != stored:
                conn.execute(
                    sa.update(keyring_state)
                    .where(keyring_state.c.name == self.name)
                    .values(state=text, updated_at=utcnow())
                )
                # Other replicas re-read it (a rotation or a destroyed key must reach them).
                feed.announce(conn, "keys", self.name)

    def __repr__(self) -> str:
        return f"DatabaseKeyringStore(name={self.name!r}, dialect={self._engine.dialect.name!r})"
