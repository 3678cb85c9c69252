"""Typed, bounded reads of the HTTP front door's JSON fields (no I/O).

Every value is checked against what its GenerateRequest field can hold before it gets there
(protobuf raises "value out of range" or cannot encode an unpaired surrogate), so a bad body is
an ``HttpRequestError`` naming the field, never a server error. The router's own limits
(validation.py) then apply to HTTP and gRPC alike.
"""

from __future__ import annotations

import math
from collections.abc import Collection, Mapping
from typing import Any

INT32_MIN, INT32_MAX = -(2**31), 2**31 - 1
INT64_MIN, INT64_MAX = -(2**63), 2**63 - 1
FLOAT32_MAX = 3.4028234663852886e38
_SHOWN_CHARS = 80


class HttpRequestError(Exception):
    """A body the front door refuses; ``status`` is the HTTP status to answer with and
    ``param`` the field at fault (OpenAI's error ``param``), when there is one."""

    def __init__(self, message: str, status: int = 400, param: str | None = None) -> None:
        super().__init__(message)
        self.message = message
        self.status = status
        self.param = param


def shown(value: Any) -> str:
    """A short rendering of a refused value (a huge or deeply nested one is cut)."""
    if isinstance(value, str | int | float | bool) or value is None:
        text = repr(value)
    else:
        text = f"a JSON {'array' if isinstance(value, list) else 'object'}"
    return text if len(text) <= _SHOWN_CHARS else text[:_SHOWN_CHARS] + "..."


def object_field(value: Any, name: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        what = "the request body" if not name else f"'{name}'"
        raise HttpRequestError(f"{what} must be a JSON object", param=name or None)
    return value


def number(
    body: Mapping[str, Any], name: str, *, float32: bool = False, prefix: str = ""
) -> float | None:
    """A finite number (one a 32-bit float holds, for ``float32`` fields), or None if absent."""
    value = body.get(name)
    if value is None:
        return None
    param = prefix + name
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise HttpRequestError(f"'{param}' must be a number, got {shown(value)}", param=param)
    limit = FLOAT32_MAX if float32 else math.inf
    if (isinstance(value, int) and abs(value) > 2**1000) or not abs(float(value)) < limit:
        raise HttpRequestError(f"'{param}' is out of range, got {shown(value)}", param=param)
    return float(value)


def integer(
    body: Mapping[str, Any],
    name: str,
    low: int = INT32_MIN,
    high: int = INT32_MAX,
    *,
    prefix: str = "",
) -> int | None:
    """An integer in [low, high], or None if absent."""
    value = body.get(name)
    if value is None:
        return None
    param = prefix + name
    if isinstance(value, bool) or not isinstance(value, int):
        raise HttpRequestError(f"'{param}' must be an integer, got {shown(value)}", param=param)
    if not low <= value <= high:
        raise HttpRequestError(
            f"'{param}' must be in [{low}, {high}], got {shown(value)}", param=param
        )
    return value


def boolean(body: Mapping[str, Any], name: str, *, prefix: str = "") -> bool:
    value = body.get(name, False)
    if value is None:
        return False
    if not isinstance(value, bool):
        param = prefix + name
        raise HttpRequestError(f"'{param}' must be true or false", param=param)
    return value


def text(value: Any, param: str) -> str:
    """A string protobuf can encode (JSON's "\\ud800" decodes to an unpaired surrogate)."""
    if not isinstance(value, str):
        raise HttpRequestError(f"'{param}' must be a string, got {shown(value)}", param=param)
    if not value.isascii():
        try:
            value.encode()
        except UnicodeEncodeError:
            raise HttpRequestError(
                f"'{param}' holds an unpaired surrogate (not valid Unicode)", param=param
            ) from None
    return value


def token_ids(value: Any, param: str) -> list[int]:
    """A non-empty list of token ids, each in [0, 2^31 - 1]."""
    if not isinstance(value, list) or not value:
        raise HttpRequestError(f"'{param}' must be a non-empty list of token ids", param=param)
    for token in value:
        if isinstance(token, bool) or not isinstance(token, int) or not 0 <= token <= INT32_MAX:
            raise HttpRequestError(
                f"'{param}' must hold token ids in [0, {INT32_MAX}], got {shown(token)}",
                param=param,
            )
    return list(value)


def check_keys(
    body: Mapping[str, Any],
    accepted: Collection[str],
    neutral: Mapping[str, tuple[Any, ...]],
    *,
    prefix: str = "",
) -> None:
    """Refuse, naming it, every key that is neither ``accepted`` nor at one of its ``neutral``
    values (the values that ask for nothing, e.g. ``tools: []``): a parameter the router cannot
    honour is refused rather than silently dropped."""
    for key, value in body.items():
        if key in accepted:
            continue
        param = prefix + key
        if key not in neutral:
            raise HttpRequestError(f"unrecognized request argument '{param}'", param=param)
        if value not in neutral[key]:
            raise HttpRequestError(
                f"'{param}' is not supported by the Voltana router"
                + (f" (only {shown(neutral[key][1])})" if len(neutral[key]) > 1 else ""),
                param=param,
            )
