"""User names as every process checks them."""

from __future__ import annotations

import unicodedata

from wire.errors import ErrorCode, WireError

MAX_USERNAME = 64


def check_username(name: str | None) -> str:
    """1-64 characters, no control or format characters; else ``WireError(403)``."""
    if name is None:
        raise WireError(ErrorCode.FORBIDDEN, "missing user name")
    if not name:
        raise WireError(ErrorCode.FORBIDDEN, "user name is empty")
    if len(name) > MAX_USERNAME:
        raise WireError(ErrorCode.FORBIDDEN, f"user name is longer than {MAX_USERNAME} characters")
    if any(unicodedata.category(c) in ("Cc", "Cf", "Cs") for c in name):
        raise WireError(ErrorCode.FORBIDDEN, "user name contains control characters")
    return name
