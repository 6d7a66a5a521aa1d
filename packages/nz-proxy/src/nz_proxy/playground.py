"""The browser playground (SPEC §12.2): one HTML file, served same-origin at
``/playground`` when ``PLAYGROUND_ENABLED=true``, under a policy that forbids loading
anything from elsewhere."""

from __future__ import annotations

from functools import cache
from pathlib import Path
from typing import Final

__all__ = ["HEADERS", "page"]

# The page may talk to its own origin only, and load nothing from outside.
HEADERS: Final = [
    (
        b"content-security-policy",
        b"default-src 'none'; script-src 'unsafe-inline'; style-src 'unsafe-inline'; "
        b"img-src 'self' data:; connect-src 'self'; base-uri 'none'; form-action 'none'; "
        b"frame-ancestors 'none'",
    ),
    (b"x-content-type-options", b"nosniff"),
    (b"referrer-policy", b"no-referrer"),
    (b"cache-control", b"no-cache"),
]


def _location() -> Path:
    packaged = Path(__file__).parent / "playground" / "index.html"
    if packaged.is_file():
        return packaged
    # A source checkout: packages/nz-proxy/src/nz_proxy → the repository root.
    return Path(__file__).resolve().parents[4] / "playground" / "index.html"


@cache
def page() -> bytes:
    """The page, read once per process."""
    return _location().read_bytes()
