"""``INSERT ... ON CONFLICT DO UPDATE ... RETURNING`` on SQLite and PostgreSQL.

Used to take a row lock and bump a counter in one statement that also creates the row the
first time. On PostgreSQL a concurrent first insert waits for the other transaction and then
takes the update path, so there is no unique-violation race to retry.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

import sqlalchemy as sa
from sqlalchemy.dialects import postgresql, sqlite


def upsert_statement(
    dialect: str,
    table: sa.Table,
    *,
    values: Mapping[str, Any],
    key: str,
    on_conflict_set: Mapping[str, Any],
    returning: tuple[sa.Column[Any], ...],
) -> sa.Insert:
    """The statement for ``dialect``; callers build it once, with bindparams in ``values``."""
    if dialect == "postgresql":
        pg = postgresql.insert(table).values(**values)
        stmt: sa.Insert = pg.on_conflict_do_update(index_elements=[key], set_=on_conflict_set)
    elif dialect == "sqlite":
        lite = sqlite.insert(table).values(**values)
        stmt = lite.on_conflict_do_update(index_elements=[key], set_=on_conflict_set)
    else:  # pragma: no cover - create_engine_for refuses other backends
        raise RuntimeError(f"unsupported dialect {dialect}")
    return stmt.returning(*returning)
