"""Periodic GPU sampling: read every GPU, keep the latest reading, hand the round to a sink
(when there is one), sleep, repeat."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable, Sequence

from voltana.gpu import GpuDevice, GpuError, GpuSample, read_gpu_sample
from voltana.services.agent.clock import AgentClock
from voltana.services.agent.sinks import GpuSampleSink

_LOG = logging.getLogger(__name__)


class GpuSampler:
    def __init__(
        self,
        devices: Sequence[GpuDevice],
        sink: GpuSampleSink | None,
        clock: AgentClock,
        interval_s: float,
        unreadable_listener: Callable[[frozenset[int]], Awaitable[None]] | None = None,
    ) -> None:
        """``unreadable_listener`` hears the set of GPUs that cannot be read whenever it
        changes (the agent turns it into its health status)."""
        self._devices = list(devices)
        self._sink = sink
        self._clock = clock
        self._interval_s = interval_s
        self._unreadable_listener = unreadable_listener
        # GPUs whose last read failed, so a broken GPU logs once, not every round.
        self._failing: set[int] = set()
        # The latest reading of each GPU (what /metrics shows).
        self.latest: dict[int, GpuSample] = {}

    async def sample_once(self) -> list[GpuSample]:
        """One sample per readable GPU (unreadable ones are skipped and logged)."""
        samples: list[GpuSample] = []
        failing_before = frozenset(self._failing)
        for device in self._devices:
            try:
                sample = await asyncio.to_thread(self._read_now, device)
            except GpuError as error:
                if device.index not in self._failing:
                    _LOG.error("cannot sample GPU %d: %s", device.index, error)
                self._failing.add(device.index)
                continue
            self._failing.discard(device.index)
            samples.append(sample)
            self.latest[device.index] = sample
        if self._unreadable_listener is not None and self._failing != failing_before:
            await self._unreadable_listener(frozenset(self._failing))
        return samples

    async def run(self) -> None:
        """Sample every ``interval_s`` until cancelled; a failing sink never stops the loop."""
        while True:
            started_s = self._clock.now_s()
            samples = await self.sample_once()
            try:
                if self._sink is not None:
                    await self._sink.send(samples)
            except Exception:  # a sink bug must not end sampling; log it with its traceback
                _LOG.exception("GPU sample sink failed")
            await self._clock.sleep_until(started_s + self._interval_s)

    def _read_now(self, device: GpuDevice) -> GpuSample:
        # Stamped in the worker thread, just before the reads: a stamp taken before the
        # thread hop would lag the energy reading by however long the hop took.
        return read_gpu_sample(device, self._clock.unix_s(self._clock.now_s()))
