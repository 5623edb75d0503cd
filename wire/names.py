"""User names as every process checks them."""

from __future__ import annotations

import unicodedata

from wire.errors import ErrorCode, WireError

MAX_USERNAME = 64


# Bidirectional embeddings, overrides and isolates: they reorder the text after them
# (a name that displays as someone else's). Other format characters (zero-width joiner
# and non-joiner, soft hyphen) are part of ordinary names and emoji: allowed.
BIDI_CONTROLS = frozenset("\u202a\u202b\u202c\u202d\u202e\u2066\u2067\u2068\u2069")


def check_username(name: str | None) -> str:
    """1-64 characters, no control characters (nor surrogates, nor bidirectional
    controls); else ``WireError(403)``."""
    if name is None:
        raise WireError(ErrorCode.FORBIDDEN, "missing user name")
    if not name:
        raise WireError(ErrorCode.FORBIDDEN, "user name is empty")
    if len(name) > MAX_USERNAME:
        raise WireError(ErrorCode.FORBIDDEN, f"user name is longer than {MAX_USERNAME} characters")
    if any(unicodedata.category(c) in ("Cc", "Cs") for c in name):
        raise WireError(ErrorCode.FORBIDDEN, "user name contains control characters")
    if not BIDI_CONTROLS.isdisjoint(name):
        raise WireError(ErrorCode.FORBIDDEN, "user name contains bidirectional controls")
    return name
