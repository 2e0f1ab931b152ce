"""Database grants for a dedicated application role (PostgreSQL).

Run by an administrator after migrating, when the service connects as its own role rather
than as the schema owner: the role may read and write every table except that it can never
UPDATE, DELETE or TRUNCATE the audit log, so even with the triggers gone (only an owner or
superuser can drop them) the app's credentials cannot rewrite history.
"""

from __future__ import annotations

from sqlalchemy.engine import Connection


def restrict_app_role(conn: Connection, role: str) -> None:
    """Grant ``role`` DML on the current schema's tables, minus audit_log rewrites.

    No-op on SQLite, which has no roles (its triggers are the only guard).
    """
    if conn.dialect.name != "postgresql":
        return
    quote = conn.dialect.identifier_preparer.quote
    schema = conn.exec_driver_sql("SELECT current_schema()").scalar_one()
    who, where = quote(role), quote(schema)
    for statement in (
        f"GRANT USAGE ON SCHEMA {where} TO {who}",
        f"GRANT SELECT, INSERT, UPDATE, DELETE ON ALL TABLES IN SCHEMA {where} TO {who}",
        f"REVOKE UPDATE, DELETE, TRUNCATE ON {where}.audit_log FROM {who}",
    ):
        conn.exec_driver_sql(statement)
