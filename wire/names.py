"""User names as every process checks them."""

from __future__ import annotations

import unicodedata

from wire.errors import ErrorCode, WireError

MAX_USERNAME = 64


# Of the format characters (Unicode Cf), only the zero-width joiner and non-joiner are
# allowed: emoji sequences and Persian or Indic names need them. The others are invisible
# (``system\u200b`` would pass for the reserved sender) or reorder the text after them.
JOINERS = frozenset("\u200c\u200d")


def check_username(name: str | None) -> str:
    """1-64 characters, no control, surrogate or format characters but the zero-width
    joiner and non-joiner; else ``WireError(403)``."""
    if name is None:
        raise WireError(ErrorCode.FORBIDDEN, "missing user name")
    if not name:
        raise WireError(ErrorCode.FORBIDDEN, "user name is empty")
    if len(name) > MAX_USERNAME:
        raise WireError(ErrorCode.FORBIDDEN, f"user name is longer than {MAX_USERNAME} characters")
    for c in name:
        category = unicodedata.category(c)
        if category in ("Cc", "Cs") or (category == "Cf" and c not in JOINERS):
            raise WireError(ErrorCode.FORBIDDEN, "user name contains control characters")
    return name
