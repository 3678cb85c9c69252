"""Time as the agent sees it, injectable so tests drive lease expiry without waiting."""

from __future__ import annotations

import asyncio
import time
from typing import Protocol

from voltana.errors import InvalidArgumentError


class AgentClock(Protocol):
    def now_s(self) -> float:
        """Monotonic seconds (leases and timeouts are measured on this)."""
        ...

    def unix_s(self, now_s: float) -> float:
        """The Unix time of a ``now_s`` reading (what the API reports)."""
        ...

    async def sleep(self, seconds: float) -> None:
        """Wait ``seconds`` on this clock (returns at once when <= 0)."""
        ...

    async def sleep_until(self, deadline_s: float) -> None:
        """Wait until ``now_s() >= deadline_s`` (returns at once when it already is).

        Prefer this over ``sleep`` for deadlines: it cannot overshoot when time moves between
        computing a delay and starting to wait.
        """
        ...


class SystemClock:
    """Wall time: ``time.monotonic`` for deadlines, ``time.time`` only for reporting."""

    def now_s(self) -> float:
        return time.monotonic()

    def unix_s(self, now_s: float) -> float:
        return time.time() - (time.monotonic() - now_s)

    async def sleep(self, seconds: float) -> None:
        await asyncio.sleep(max(0.0, seconds))

    async def sleep_until(self, deadline_s: float) -> None:
        await asyncio.sleep(max(0.0, deadline_s - time.monotonic()))


class ManualClock:
    """Virtual time that moves only when ``advance`` is called (tests, simulations).

    ``sleep``/``sleep_until`` park the caller until ``advance`` carries time to its deadline.
    """

    def __init__(self, start_s: float = 0.0, unix_at_start_s: float = 1_700_000_000.0) -> None:
        self._now_s = start_s
        self._unix_offset_s = unix_at_start_s - start_s
        self._sleepers: list[tuple[float, asyncio.Future[None]]] = []
        self.sleep_calls = 0

    def now_s(self) -> float:
        return self._now_s

    def unix_s(self, now_s: float) -> float:
        return now_s + self._unix_offset_s

    @property
    def pending_sleepers(self) -> int:
        return sum(1 for _, future in self._sleepers if not future.done())

    async def sleep(self, seconds: float) -> None:
        await self.sleep_until(self._now_s + seconds)

    async def sleep_until(self, deadline_s: float) -> None:
        self.sleep_calls += 1
        if deadline_s <= self._now_s:
            await asyncio.sleep(0)
            return
        entry = (deadline_s, asyncio.get_running_loop().create_future())
        self._sleepers.append(entry)
        try:
            await entry[1]
        finally:
            if entry in self._sleepers:
                self._sleepers.remove(entry)

    def advance(self, seconds: float) -> None:
        """Move time forward and wake every sleeper whose deadline has passed."""
        if seconds < 0:
            raise InvalidArgumentError("a manual clock only moves forward")
        self._now_s += seconds
        for deadline_s, future in list(self._sleepers):
            if deadline_s <= self._now_s and not future.done():
                future.set_result(None)
