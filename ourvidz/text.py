"""Checks on text that clients send and the services store."""

from __future__ import annotations

import unicodedata


def has_control_chars(text: str) -> bool:
    """Control characters other than tab and line breaks. PostgreSQL refuses
    NUL in text, and none of them belongs in a prompt, a title or a name: a
    request that carries one is refused as bad input, not failed on storing."""
    return any(unicodedata.category(c) == "Cc" and c not in "\t\n\r" for c in text)
