"""What a broker symbol may be spelled as, for bars and signals alike."""

from __future__ import annotations

import re

# A broker symbol: EURUSD, EURUSD.m, XAUUSD#, US30.cash. Anchored, so JSON Schema's search,
# pydantic's Rust regex and re.fullmatch all mean the same.
SYMBOL_PATTERN = r"^[A-Za-z0-9._#\-]{1,32}$"
SYMBOL_RE = re.compile(SYMBOL_PATTERN)
SYMBOL_RULE = "1-32 letters, digits or . _ # -"
