"""Fixtures for the PDF tests: a timestamp authority for the module."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.pdf.tools import Tsa, timestamp_authority


@pytest.fixture(scope="module")
def tsa() -> Iterator[Tsa]:
    with timestamp_authority() as t:
        yield t
