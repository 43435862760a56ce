"""Persistence: schema, engine set-up, migrations (Alembic)."""
