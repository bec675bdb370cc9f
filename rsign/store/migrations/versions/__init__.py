"""One module per schema revision (Alembic skips ``__init__``)."""
