"""Bounds on strings and numbers that arrive over the wire, shared by every service.

Each check raises ``error`` (an InvalidArgumentError by default, so the call ends with
INVALID_ARGUMENT) with a message that names the field and never echoes more than a short,
escaped prefix of the offending value (voltana.text.shorten).
"""

from __future__ import annotations

import math
from collections.abc import Collection

from voltana.errors import InvalidArgumentError, VoltanaError
from voltana.text import shorten

# Identifiers: instance, request and lease-holder ids.
MAX_ID_CHARS = 256
# Names: policies, GPU keys, hosts.
MAX_NAME_CHARS = 256
# host:port addresses and URLs.
MAX_ADDRESS_CHARS = 512
# Free text: reasons, error messages in records.
MAX_TEXT_CHARS = 1024
# Ids in one selection (GetSnapshot, GetStatus, ...).
MAX_SELECTED_IDS = 4096
# Latency targets above this are typos or attacks, not SLOs (10 minutes).
MAX_SLO_MS = 600_000.0

ErrorType = type[VoltanaError]


def check_id(
    value: str, what: str, *, error: ErrorType = InvalidArgumentError, required: bool = True
) -> None:
    """An identifier: non-empty (when ``required``), printable, at most MAX_ID_CHARS."""
    if not value:
        if required:
            raise error(f"{what} must not be empty")
        return
    if len(value) > MAX_ID_CHARS:
        raise error(
            f"{what} is {len(value)} characters long; at most {MAX_ID_CHARS} are allowed "
            f"(starts {shorten(value, 32)})"
        )
    if not value.isprintable() or value != value.strip():
        raise error(
            f"{what} {shorten(value)} must be printable, without control characters or "
            "leading/trailing spaces"
        )


def check_text(
    value: str,
    what: str,
    *,
    max_chars: int = MAX_TEXT_CHARS,
    error: ErrorType = InvalidArgumentError,
) -> None:
    """Free text (may be empty, may hold newlines): at most ``max_chars`` characters."""
    if len(value) > max_chars:
        raise error(
            f"{what} is {len(value)} characters long; at most {max_chars} are allowed "
            f"(starts {shorten(value, 32)})"
        )


def check_name(value: str, what: str, *, error: ErrorType = InvalidArgumentError) -> None:
    """A name (policy, GPU key): printable, at most MAX_NAME_CHARS; may be empty."""
    check_text(value, what, max_chars=MAX_NAME_CHARS, error=error)
    if not value.isprintable():
        raise error(f"{what} {shorten(value)} must be printable")


def check_address(value: str, what: str, *, error: ErrorType = InvalidArgumentError) -> None:
    """host:port or a URL: printable, at most MAX_ADDRESS_CHARS; may be empty."""
    check_text(value, what, max_chars=MAX_ADDRESS_CHARS, error=error)
    if not value.isprintable() or any(char.isspace() for char in value):
        raise error(f"{what} {shorten(value)} must be printable, without spaces")


def check_ids(
    values: Collection[str], what: str, *, error: ErrorType = InvalidArgumentError
) -> None:
    """A selection of ids: at most MAX_SELECTED_IDS, each a valid id."""
    if len(values) > MAX_SELECTED_IDS:
        raise error(f"{what} lists {len(values)} ids; at most {MAX_SELECTED_IDS} are allowed")
    for value in values:
        check_id(value, f"an id in {what}", error=error)


def slo_target_problem(name: str, value: float) -> str | None:
    """Why ``value`` cannot be an SLO target in ms (not finite, <= 0, absurdly large), or None."""
    if not (math.isfinite(value) and 0 < value <= MAX_SLO_MS):
        return f"{name} must be a number in (0, {MAX_SLO_MS:g}] ms, got {value:g}"
    return None
