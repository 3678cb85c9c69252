"""The event loop a service process runs on: uvloop (faster I/O and callbacks, hence less CPU
per request on the router's hot path) unless turned off, or asyncio's own."""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any, TypeVar

from voltana.errors import ConfigError

EVENT_LOOPS = ("uvloop", "asyncio")
DEFAULT_EVENT_LOOP = "uvloop"
_T = TypeVar("_T")


def loop_factory(name: str) -> Callable[[], asyncio.AbstractEventLoop] | None:
    """How to make the ``name`` loop (None: asyncio's default)."""
    if name == "asyncio":
        return None
    if name != "uvloop":
        raise ConfigError(f"unknown event loop {name!r} (one of: {', '.join(EVENT_LOOPS)})")
    try:
        import uvloop
    except ImportError:
        raise ConfigError(
            "uvloop is not installed (pip install uvloop), or pick --event-loop asyncio"
        ) from None
    return uvloop.new_event_loop


def run(main: Coroutine[Any, Any, _T], event_loop: str = DEFAULT_EVENT_LOOP) -> _T:
    """``asyncio.run(main)`` on the ``event_loop`` loop."""
    factory = loop_factory(event_loop)
    try:
        with asyncio.Runner(loop_factory=factory) as runner:
            return runner.run(main)
    finally:
        main.close()  # no "never awaited" warning when the loop could not start
