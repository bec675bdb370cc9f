"""Persistence: the only package that knows SQLAlchemy. Hands out plain records (``rsign.domain.records``)."""

from rsign.store.engine import Store, Tx, WriteTx

__all__ = ["Store", "Tx", "WriteTx"]
