"""Blocking wrapper of VoltanaClient for plain scripts (no asyncio in the caller)."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import Coroutine, Iterator, Mapping, Sequence
from types import TracebackType
from typing import Any, TypeVar

from opentelemetry import trace

from voltana.rpc import TlsFiles
from voltana.sdk.client import DEFAULT_MAX_ATTEMPTS, VoltanaClient
from voltana.sdk.types import GenerationResult, GenerationSummary, PlacementInfo, TokenEvent

ResultT = TypeVar("ResultT")


class SyncVoltanaClient:
    """The async client run on its own event loop in a background thread (one router, or
    several active-active ones, as VoltanaClient).

    One instance may be shared by several threads; calls run concurrently on its loop. Close it
    (or use ``with``) to stop the thread.

        with SyncVoltanaClient("127.0.0.1:50051") as client:
            print(client.generate("Hello", max_new_tokens=16).text)
    """

    def __init__(
        self,
        target: str | Sequence[str],
        *,
        timeout_s: float | None = None,
        metadata: Sequence[tuple[str, str]] = (),
        channel_options: Mapping[str, Any] | None = None,
        tracer_provider: trace.TracerProvider | None = None,
        api_key: str | None = None,
        tls: TlsFiles | None = None,
        max_attempts: int = DEFAULT_MAX_ATTEMPTS,
    ) -> None:
        self._client = VoltanaClient(
            target,
            timeout_s=timeout_s,
            metadata=metadata,
            channel_options=channel_options,
            tracer_provider=tracer_provider,
            api_key=api_key,
            tls=tls,
            max_attempts=max_attempts,
        )
        self._loop = asyncio.new_event_loop()
        self._thread = threading.Thread(
            target=self._loop.run_forever, name="voltana-sdk-loop", daemon=True
        )
        self._thread.start()
        self._closed = False

    def _run(self, coroutine: Coroutine[Any, Any, ResultT]) -> ResultT:
        if self._closed:
            coroutine.close()
            raise RuntimeError("the client is closed")
        future = asyncio.run_coroutine_threadsafe(coroutine, self._loop)
        try:
            return future.result()
        except BaseException:
            future.cancel()  # e.g. KeyboardInterrupt: do not leave the call running
            raise

    def generate(self, prompt: str | None = None, **options: Any) -> GenerationResult:
        """The whole generation; takes VoltanaClient.generate's keyword arguments."""
        return self._run(self._client.generate(prompt, **options, stream=False))

    def stream(
        self, prompt: str | None = None, **options: Any
    ) -> Iterator[TokenEvent | GenerationSummary]:
        """TokenEvents as they arrive, then the GenerationSummary. Stopping the iteration early
        (``break``) cancels the request."""
        generation = self._client.generate(prompt, **options, stream=True)
        finished = False
        try:
            while True:
                try:
                    item = self._run(generation.__anext__())
                except StopAsyncIteration:
                    finished = True
                    return
                yield item
        finally:
            if not finished and not self._closed:
                self._run(generation.aclose())

    def place(self, prompt: str | None = None, **options: Any) -> PlacementInfo:
        return self._run(self._client.place(prompt, **options))

    def wait_until_ready(self, timeout_s: float) -> None:
        self._run(self._client.wait_until_ready(timeout_s))

    def close(self) -> None:
        if self._closed:
            return
        try:
            self._run(self._client.close())
        finally:
            self._closed = True
            self._loop.call_soon_threadsafe(self._loop.stop)
            self._thread.join()
            self._loop.close()

    def __enter__(self) -> SyncVoltanaClient:
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        traceback: TracebackType | None,
    ) -> None:
        self.close()
