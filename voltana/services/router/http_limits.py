"""Limits of the router's HTTP front door, and the safe reading of a JSON body (no I/O).

A body is refused before ``json.loads`` sees it when it nests deeper than ``max_json_depth`` or
holds more than ``max_json_containers`` arrays and objects (measured at C speed with numpy:
quotes not escaped by an odd run of backslashes open and close strings, brackets outside
strings count), and after it when it is not UTF-8 or holds NaN/Infinity, which JSON does not
have. Python's own nesting guard stays behind as a last net. With both limits the costliest
body left to parse is about a million numbers in one array (2 MiB), not millions of tiny
arrays, which cost json.loads several times as much.
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass, field
from typing import Any

import numpy as np

from voltana.errors import ConfigError
from voltana.flags import flag, no_flag
from voltana.flags.values import non_negative_int, positive_float, positive_int
from voltana.services.router.http_fields import HttpRequestError

_QUOTE, _BACKSLASH = 0x22, 0x5C
_OPENERS, _CLOSERS = (0x5B, 0x7B), (0x5D, 0x7D)


@dataclass(frozen=True)
class HttpLimits:
    """What one client may hold of the HTTP door. Timeouts are wall seconds."""

    # Largest request body: a prompt at the router's default limit of 32k tokens fits (ids
    # ~200 KB; text ~130 KB, 6 bytes a character if all escaped); parsing is what it bounds.
    max_body_bytes: int = field(
        default=2 * 2**20, metadata=flag("largest request body, bytes", parse=positive_int)
    )
    # Deepest JSON nesting (an OpenAI chat body needs 4), and most arrays and objects in one
    # body (a chat of 10k messages of one text part each has 20k).
    max_json_depth: int = field(default=32, metadata=no_flag())
    max_json_containers: int = field(default=50_000, metadata=no_flag())
    # From a request's first byte to the end of its headers; the connection is closed after.
    header_timeout_s: float = field(
        default=10.0,
        metadata=flag("a request's headers must arrive within this", parse=positive_float),
    )
    # From the end of the headers to the end of the body; 408 and the connection is closed.
    body_timeout_s: float = field(
        default=30.0,
        metadata=flag("its body within this after the headers, else 408", parse=positive_float),
    )
    # An idle keep-alive connection (also one that never sends a byte) is closed after this.
    keepalive_timeout_s: float = field(
        default=15.0,
        metadata=flag("idle connections are closed after this", parse=positive_float),
    )
    # Open connections per remote address; more are answered 429 and closed (0 = no cap).
    # Clients behind one proxy or NAT share an address: raise it there.
    max_connections_per_client: int = field(
        default=256,
        metadata=flag(
            "open connections per remote address, more get 429; 0 = no cap",
            parse=non_negative_int,
        ),
    )

    def __post_init__(self) -> None:
        for name in ("max_body_bytes", "max_json_depth", "max_json_containers"):
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


def json_shape(raw: bytes) -> tuple[int, int]:
    """How deep the JSON text ``raw`` nests arrays and objects, and how many it holds (exact
    for valid JSON: brackets inside strings do not count)."""
    data = np.frombuffer(raw, dtype=np.uint8)
    if data.size == 0:
        return 0, 0
    # A quote is escaped when an odd run of backslashes precedes it.
    quotes = np.flatnonzero(data == _QUOTE)
    backslashes = data == _BACKSLASH
    if backslashes.any():
        positions = np.arange(data.size, dtype=np.int32)
        last_other = np.maximum.accumulate(np.where(backslashes, np.int32(-1), positions))
        before = quotes - 1
        run = np.where(before >= 0, before - last_other[np.maximum(before, 0)], 0)
        quotes = quotes[run % 2 == 0]
    toggles = np.zeros(data.size, dtype=np.int8)
    toggles[quotes] = 1
    outside_strings = (np.cumsum(toggles, dtype=np.int32) & 1) == 0
    opens = ((data == _OPENERS[0]) | (data == _OPENERS[1])) & outside_strings
    closes = ((data == _CLOSERS[0]) | (data == _CLOSERS[1])) & outside_strings
    step = opens.astype(np.int32) - closes.astype(np.int32)
    return int(np.cumsum(step, dtype=np.int32).max()), int(np.count_nonzero(opens))


def json_depth(raw: bytes) -> int:
    return json_shape(raw)[0]


def check_json_shape(raw: bytes, limits: HttpLimits) -> None:
    """HttpRequestError when ``raw`` nests deeper than ``max_json_depth`` or holds more than
    ``max_json_containers`` arrays and objects (millions of tiny arrays cost json.loads
    seconds of CPU in a body well within the size limit)."""
    brackets = raw.count(b"[") + raw.count(b"{")
    if brackets <= min(limits.max_json_depth, limits.max_json_containers):
        return  # too few brackets to go over either limit: the common case, decided at once
    depth, containers = json_shape(raw)
    if depth > limits.max_json_depth:
        raise HttpRequestError(f"the JSON body nests deeper than {limits.max_json_depth} levels")
    if containers > limits.max_json_containers:
        raise HttpRequestError(
            f"the JSON body holds {containers} arrays and objects, the limit is "
            f"{limits.max_json_containers}"
        )


def nesting_exceeds(raw: bytes, max_depth: int) -> bool:
    """Whether the JSON text ``raw`` nests arrays/objects deeper than ``max_depth``."""
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return False
    return json_depth(raw) > max_depth


def _no_constant(name: str) -> Any:
    raise ValueError(f"{name} is not a JSON value")


def parse_json_body(raw: bytes, limits: HttpLimits) -> Any:
    """The body's JSON value; HttpRequestError (400) for anything else."""
    check_json_shape(raw, limits)
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
