"""Limits of the router's HTTP front door, and the safe reading of a JSON body (no I/O).

A body is refused before ``json.loads`` sees it when it nests deeper than ``max_json_depth``
(measured at C speed with numpy: quotes not escaped by an odd run of backslashes open and close
strings, brackets outside strings count), and after it when it is not UTF-8 or holds
NaN/Infinity, which JSON does not have. Python's own nesting guard stays behind as a last net.
The parse itself costs up to about a second of CPU for the largest body of the worst shape
(millions of tiny arrays): ``max_body_bytes`` is what bounds it.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from typing import Any

import numpy as np

from voltana.errors import ConfigError
from voltana.services.router.http_fields import HttpRequestError

_QUOTE, _BACKSLASH = 0x22, 0x5C
_OPENERS, _CLOSERS = (0x5B, 0x7B), (0x5D, 0x7D)


@dataclass(frozen=True)
class HttpLimits:
    """What one client may hold of the HTTP door. Timeouts are wall seconds."""

    # Largest request body: a prompt at the router's default limit of 32k tokens fits (ids
    # ~200 KB; text ~130 KB, 6 bytes a character if all escaped); parsing is what it bounds.
    max_body_bytes: int = 2 * 2**20
    # Deepest JSON nesting (an OpenAI chat body needs 4).
    max_json_depth: int = 32
    # From a request's first byte to the end of its headers; the connection is closed after.
    header_timeout_s: float = 10.0
    # From the end of the headers to the end of the body; 408 and the connection is closed.
    body_timeout_s: float = 30.0
    # An idle keep-alive connection (also one that never sends a byte) is closed after this.
    keepalive_timeout_s: float = 15.0
    # Open connections per remote address; more are answered 429 and closed (0 = no cap).
    # Clients behind one proxy or NAT share an address: raise it there.
    max_connections_per_client: int = 256

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_json_depth"):
            if getattr(self, name) < 1:
                raise ConfigError(f"HTTP {name} must be >= 1, got {getattr(self, name)}")
        for name in ("header_timeout_s", "body_timeout_s", "keepalive_timeout_s"):
            value = getattr(self, name)
            if not math.isfinite(value) or value <= 0:
                raise ConfigError(f"HTTP {name} must be a finite number > 0, got {value}")
        if self.max_connections_per_client < 0:
            raise ConfigError(
                "HTTP max_connections_per_client must be >= 0, got "
                f"{self.max_connections_per_client}"
            )


def json_depth(raw: bytes) -> int:
    """How deep the JSON text ``raw`` nests arrays and objects (exact for valid JSON)."""
    data = np.frombuffer(raw, dtype=np.uint8)
    if data.size == 0:
        return 0
    # A quote is escaped when an odd run of backslashes precedes it.
    positions = np.arange(data.size, dtype=np.int64)
    last_other = np.maximum.accumulate(np.where(data == _BACKSLASH, -1, positions))
    quotes = np.flatnonzero(data == _QUOTE)
    before = quotes - 1
    run = np.where(before >= 0, before - last_other[np.maximum(before, 0)], 0)
    toggles = np.zeros(data.size, dtype=np.int8)
    toggles[quotes[run % 2 == 0]] = 1
    inside_string = np.cumsum(toggles, dtype=np.int64) % 2 == 1
    step = np.isin(data, _OPENERS).astype(np.int64) - np.isin(data, _CLOSERS)
    step[inside_string] = 0
    return int(np.cumsum(step).max())


def nesting_exceeds(raw: bytes, max_depth: int) -> bool:
    """Whether the JSON text ``raw`` nests arrays/objects deeper than ``max_depth``."""
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return False  # too few brackets to nest that deep: the common case, decided at once
    return json_depth(raw) > max_depth


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def parse_json_body(raw: bytes, limits: HttpLimits) -> Any:
    """The body's JSON value; HttpRequestError (400) for anything else."""
    if nesting_exceeds(raw, limits.max_json_depth):
        raise HttpRequestError(f"the JSON body nests deeper than {limits.max_json_depth} levels")
    try:
        body_text = raw.decode("utf-8")
    except UnicodeDecodeError as error:
        raise HttpRequestError(
            f"the request body is not valid UTF-8 (byte {error.start})"
        ) from None
    try:
        return json.loads(body_text, parse_constant=_no_constant)
    except RecursionError:
        raise HttpRequestError("the JSON body nests too deeply") from None
    except ValueError as error:
        raise HttpRequestError(f"the request body is not valid JSON: {error}"[:300]) from None
