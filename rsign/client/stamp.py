"""A visible signature stamp (signer, agency, time) in an embedded font, so that Vietnamese
diacritics render and extract correctly: pyHanko's standard 14 fonts cover Latin-1 only."""

from __future__ import annotations

import unicodedata
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from pyhanko.pdf_utils.font.opentype import GlyphAccumulatorFactory
from pyhanko.pdf_utils.text import TextBoxStyle
from pyhanko.stamp import TextStampStyle

# Fonts with the whole Vietnamese repertoire, where Linux distributions put them (Debian and
# Ubuntu: fonts-dejavu-core; Fedora: dejavu-sans-fonts). Pass ``font_file`` to use another.
FONT_CANDIDATES = (
    "/usr/share/fonts/truetype/dejavu/DejaVuSans.ttf",
    "/usr/share/fonts/dejavu-sans-fonts/DejaVuSans.ttf",
    "/usr/share/fonts/TTF/DejaVuSans.ttf",
)

STAMP_TEXT = "Ký bởi: %(name)s\n%(agency)s\nThời gian: %(ts)s"


def default_font() -> Path:
    for candidate in FONT_CANDIDATES:
        if Path(candidate).is_file():
            return Path(candidate)
    raise FileNotFoundError(
        "no font with Vietnamese diacritics found (install fonts-dejavu-core) : give Stamp(font_file=...)"
    )


@dataclass(frozen=True)
class Stamp:
    """``box``: (x1, y1, x2, y2) in PDF points from the page's lower left corner; ``page``: 0-based
    (negative counts from the end). The time is the signing time, in the client's time zone."""

    signer_name: str
    agency: str = ""
    page: int = 0
    box: tuple[int, int, int, int] = (320, 30, 575, 100)
    font_file: str | Path | None = None
    font_size: int = 9
    text: str = STAMP_TEXT
    extra: dict[str, str] = field(default_factory=dict)

    def text_params(self) -> dict[str, Any]:
        # NFC: precomposed letters (ầ, not a + combining marks), which the font maps one to one.
        params = {"name": self.signer_name, "agency": self.agency, **self.extra}
        return {k: unicodedata.normalize("NFC", v) for k, v in params.items()}


def stamp_style(stamp: Stamp) -> TextStampStyle:
    font = GlyphAccumulatorFactory(str(stamp.font_file or default_font()), font_size=stamp.font_size)
    return TextStampStyle(
        stamp_text=unicodedata.normalize("NFC", stamp.text),
        text_box_style=TextBoxStyle(font=font),
        timestamp_format="%d/%m/%Y %H:%M:%S %z",
        border_width=1,
    )
