"""What every in-process service shares: explicit start/stop, usable as ``async with``."""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Iterable
from types import TracebackType
from typing import Any, Self, TypeVar

_T = TypeVar("_T")


class AsyncService(ABC):
    """A service started and stopped in-process; ``async with`` starts it and always stops it."""

    @abstractmethod
    async def start(self) -> None: ...

    @abstractmethod
    async def stop(self) -> None: ...

    async def __aenter__(self) -> Self:
        await self.start()
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        await self.stop()


async def cancel_and_wait(tasks: Iterable[asyncio.Task[Any] | None]) -> None:
    """Cancel background tasks and wait until each has ended (their cancellation swallowed);
    None stands for a task that was never started."""
    pending = [task for task in tasks if task is not None]
    for task in pending:
        task.cancel()
    for task in pending:
        with contextlib.suppress(asyncio.CancelledError):
            await task


async def finish_before_cancelling(work: Awaitable[_T]) -> _T:
    """Await ``work`` to its end even when the caller is cancelled meanwhile, then let the
    cancellation through: for a change that must not stop half made (a GPU clock locked but
    not yet leased)."""
    task = asyncio.ensure_future(work)
    cancelled = False
    while True:
        try:
            result = await asyncio.shield(task)
            break
        except asyncio.CancelledError:
            if task.done():  # the work itself was cancelled (or raised it)
                raise
            cancelled = True
    if cancelled:
        raise asyncio.CancelledError
    return result
