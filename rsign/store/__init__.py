"""Persistence: the only package that knows SQLAlchemy. Hands out plain records (``rsign.domain.records``)."""

from rsign.store.audit_log import AUDIT_ROW_COLUMNS
from rsign.store.engine import Store, Tx, WriteTx

__all__ = ["AUDIT_ROW_COLUMNS", "Store", "Tx", "WriteTx"]
