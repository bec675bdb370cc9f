"""Persistence: SQLAlchemy 2.0 models and the unit of work. The only package that knows SQLAlchemy."""
