"""What every in-process service shares: explicit start/stop, usable as ``async with``."""

from __future__ import annotations

import asyncio
import contextlib
from abc import ABC, abstractmethod
from collections.abc import Awaitable, Iterable
from types import TracebackType
from typing import Any, Protocol, Self, TypeVar, runtime_checkable

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


@runtime_checkable
class FailsForGood(Protocol):
    """A service that can fail in a way no retry heals (e.g. a refused password): whoever runs
    it waits on ``failure()`` beside its stop signal, stops it and reports the error."""

    async def failure(self) -> BaseException: ...


async def wait_for_stop_or_failure(stop: asyncio.Event, service: object) -> None:
    """Until ``stop`` is set; raises the service's failure first if it ``FailsForGood``."""
    waiters: list[asyncio.Task[Any]] = [asyncio.create_task(stop.wait())]
    if isinstance(service, FailsForGood):
        waiters.append(asyncio.create_task(service.failure()))
    try:
        done, _ = await asyncio.wait(waiters, return_when=asyncio.FIRST_COMPLETED)
    finally:
        await cancel_and_wait(waiters)
    failed = waiters[1:]
    if failed and failed[0] in done:
        raise failed[0].result()


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
