"""Persistence: the only package that knows SQLAlchemy. Hands out plain records (``rsign.domain.records``)."""

from rsign.store.engine import SCHEMA_VERSION, Store, Tx, WriteTx

__all__ = ["SCHEMA_VERSION", "Store", "Tx", "WriteTx"]
