"""Limits of the router's HTTP front door, and the safe reading of a JSON body (no I/O).

A body is refused before ``json.loads`` sees it when it nests deeper than ``max_json_depth``
(the check runs at C speed: strings are blanked out, then innermost ``[]``/``{}`` pairs are
peeled off once per level), and after it when it is not UTF-8 or holds NaN/Infinity, which
JSON does not have. Python's own nesting guard stays behind as a last net.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from typing import Any

from voltana.errors import ConfigError
from voltana.services.router.http_fields import HttpRequestError

_JSON_STRING = re.compile(rb'"[^"\\]*(?:\\.[^"\\]*)*"', re.DOTALL)
_INNERMOST_PAIR = re.compile(rb"\[\]|\{\}")
_NOT_BRACKETS = bytes(byte for byte in range(256) if byte not in b"[]{}")


@dataclass(frozen=True)
class HttpLimits:
    """What one client may hold of the HTTP door. Timeouts are wall seconds."""

    # Largest request body (long token-id prompts fit: 32k ids are ~200 KB).
    max_body_bytes: int = 4 * 2**20
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


def nesting_exceeds(raw: bytes, max_depth: int) -> bool:
    """Whether the JSON text ``raw`` nests arrays/objects deeper than ``max_depth``."""
    if raw.count(b"[") + raw.count(b"{") <= max_depth:
        return False  # too few brackets to nest that deep: the common case, decided at once
    skeleton = _JSON_STRING.sub(b"", raw).translate(None, _NOT_BRACKETS)
    for _ in range(max_depth):
        peeled = _INNERMOST_PAIR.sub(b"", skeleton)
        if peeled == skeleton:  # done; or unbalanced, invalid JSON that json.loads refuses
            return len(skeleton) > max_depth  # ... unless it could still recurse that deep
        skeleton = peeled
    return bool(skeleton)


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
