"""The HTML pages the gateway serves, with the headers that keep other sites out of them.

Every page: no framing by another site (``frame-ancestors 'none'``, ``X-Frame-Options``:
the files page has Delete buttons, clickjacking), no MIME sniffing, no Referer. The
gateway's own pages (rooms, files, dashboard) also get a Content-Security-Policy that
runs only their own inline script (its SHA-256) and lets them connect only to their own
origin. The tutorial's two pages keep their bytes (the contract), inline event handlers
included, so their policy allows inline script: only the framing and base/form rules
apply to them.
"""

from __future__ import annotations

import base64
import hashlib
import re

from fastapi.responses import HTMLResponse

_SCRIPT = re.compile(r"<script>(.*?)</script>", re.S)

COMMON = {
    "X-Frame-Options": "DENY",
    "X-Content-Type-Options": "nosniff",
    "Referrer-Policy": "no-referrer",
}
_TUTORIAL_CSP = "frame-ancestors 'none'; base-uri 'none'; object-src 'none'"


def script_hashes(html: str) -> list[str]:
    """CSP sources for the page's inline scripts, ``'sha256-<base64>'`` each."""
    return [
        f"'sha256-{base64.b64encode(hashlib.sha256(body.encode()).digest()).decode()}'"
        for body in _SCRIPT.findall(html)
    ]


def policy(html: str) -> str:
    """The Content-Security-Policy of one of the gateway's own pages."""
    scripts = " ".join(script_hashes(html)) or "'none'"
    return (
        f"default-src 'none'; script-src {scripts}; style-src 'unsafe-inline'; "
        "img-src 'self' data: blob:; connect-src 'self'; frame-ancestors 'none'; "
        "base-uri 'none'; form-action 'none'"
    )


class Page:
    """One page: its HTML and its headers, worked out once."""

    def __init__(self, html: str, *, tutorial: bool = False) -> None:
        self.html = html
        csp = _TUTORIAL_CSP if tutorial else policy(html)
        self.headers = {**COMMON, "Content-Security-Policy": csp}

    def response(self, html: str | None = None) -> HTMLResponse:
        """The page (``html``: the tutorial's, rewritten for the Host it was asked at)."""
        return HTMLResponse(self.html if html is None else html, headers=self.headers)
