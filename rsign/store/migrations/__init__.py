"""Alembic migration scripts (``env.py`` and ``versions/``); run by ``rsign.store.migrate``."""
