"""Untrusted strings made safe to put in error messages and log lines."""

from __future__ import annotations

DEFAULT_SHOWN_CHARS = 80
# Room for the "… (+N chars)" note of a cut text.
_SUFFIX_ROOM = 24


def shorten(value: object, max_chars: int = DEFAULT_SHOWN_CHARS) -> str:
    """``repr`` of ``value``, cut to about ``max_chars`` characters.

    repr quotes the string and escapes newlines and other control characters, so a caller's
    text can neither forge a log line nor blow up a message; a cut one ends with how much was
    left out, e.g. ``'aaaa…' (+10485700 chars)``.
    """
    text = value if isinstance(value, str) else str(value)
    if len(text) <= max_chars:
        return repr(text)
    return f"{text[:max_chars]!r}… (+{len(text) - max_chars} chars)"


def truncate(text: str, max_chars: int) -> str:
    """``text`` cut to at most ``max_chars`` characters, saying how much was cut."""
    if len(text) <= max_chars:
        return text
    kept = max(0, max_chars - _SUFFIX_ROOM)
    return f"{text[:kept]}… (+{len(text) - kept} chars)"
