"""JSON on the hot paths: orjson (several times faster than the standard library), falling back
to ``json`` for what orjson refuses but Python's json reads (NaN, Infinity), so nothing that
parsed before fails now. One difference stays: orjson reads integers beyond 64 bits as floats
(no token id, count or limit comes near that)."""

from __future__ import annotations

import json
from typing import Any

import orjson


def loads(data: bytes | str) -> Any:
    """The JSON document in ``data``; ValueError when it is not one."""
    try:
        return orjson.loads(data)
    except orjson.JSONDecodeError:
        return json.loads(data)


def dumps(value: Any) -> bytes:
    """Compact JSON of ``value`` (NaN and infinities become null, as JSON has neither)."""
    return orjson.dumps(value)


def dumps_text(value: Any) -> str:
    return orjson.dumps(value).decode()
