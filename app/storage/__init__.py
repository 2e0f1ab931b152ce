"""Metadata store (SQLAlchemy Core + Alembic), append-only audit log, sealed-object store."""
