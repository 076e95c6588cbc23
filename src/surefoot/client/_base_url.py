"""``url_problem``: is a value an absolute http:// or https:// URL, as ``base_url`` must be?

Used by ``Integration`` and by the ``[integrations]`` schema (``_schema.py``), which must not
import the transport. httpx parses the URL (the clients built from it will parse it the same
way), imported only when a URL is checked, so importing this module loads no I/O module.
"""

from __future__ import annotations

from surefoot._masking import shown

__all__ = ["url_problem"]


def url_problem(value: object) -> str | None:
    """What is wrong with ``value`` as a base URL (``expected ..., got ...``), or None."""
    import httpx

    expected = "expected an absolute http:// or https:// URL"
    if not isinstance(value, str):
        return f"{expected}, got {shown(value)}"
    try:
        url = httpx.URL(value)
    except httpx.InvalidURL:
        return f"{expected}, got {value!r}"
    if url.scheme not in ("http", "https") or not url.host:
        return f"{expected}, got {value!r}"
    return None
