"""Alembic environment and revisions of the metadata store (run via app.storage.migrate)."""
