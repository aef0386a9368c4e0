"""Variants of the shipped mappings for tests that need one setting changed."""

from __future__ import annotations

from pathlib import Path

SHIPPED_CACHE = "cache_seconds: 300"


def without_live_cache(mapping: str, folder: Path, expected: int = 1) -> str:
    """A copy of ``mapping`` whose live data model is never cached, so every /meta call
    asks the CRM. ``expected`` is how many live models the mapping has: the test fails
    loudly if the shipped file changed, instead of quietly testing a cached model."""
    text = Path(mapping).read_text(encoding="utf-8")
    assert text.count(SHIPPED_CACHE) == expected
    path = folder / f"uncached-{Path(mapping).name}"
    path.write_text(text.replace(SHIPPED_CACHE, "cache_seconds: 0"), encoding="utf-8")
    return str(path)
