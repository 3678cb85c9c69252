"""One measurement each: idle draw, a prefill, a decode batch at steady state.

Latency comes from SGLang (a prefill is a request with max_new_tokens=1: its server-side
``e2e_latency`` when the engine reports one, else the client's time to first token; decode is the
mean of SGLang's inter-token latency histogram while B concurrent requests all decode, read from
/metrics before and after). Power comes from the agent:
the increase of the GPUs' energy counters over the measurement divided by its length (or the mean
of power samples when a GPU has no counter). Times on the engine's clock: wall time x
``time_scale`` (1 on real hardware; a sped-up simulated engine runs faster than wall time).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
import statistics
import time
from collections.abc import Awaitable
from dataclasses import dataclass
from typing import Any

from voltana.engine import EngineError, SglangHttpClient
from voltana.errors import FailedPreconditionError, UnavailableError
from voltana.profiler.agent_clocks import AgentClockControl, GroupReading

# Prompt token ids stay clear of special tokens; random prompts defeat SGLang's prefix cache.
_FIRST_TOKEN_ID = 1000
_POWER_POLL_S = 0.05
_IDLE_POLL_S = 0.02
# SGLang's per-token latency histogram (older releases: the second name).
_ITL_HISTOGRAMS = ("sglang:inter_token_latency_seconds", "sglang:time_per_output_token_seconds")


@dataclass(frozen=True)
class Measured:
    latency_s: float
    power_w: float


@dataclass(frozen=True)
class DecodeMeasured(Measured):
    # KV-cache tokens the batch held, averaged over the measurement.
    kv_tokens: int


@dataclass(frozen=True)
class _DecodeCounters:
    """The engine's counters at one moment (SGLang /metrics)."""

    itl_sum_s: float
    itl_count: float
    kv_tokens: float


class Measurer:
    """Measurements against one SGLang instance and the agent holding its GPUs."""

    def __init__(
        self,
        client: SglangHttpClient,
        engine_url: str,
        agent: AgentClockControl,
        *,
        vocab_size: int,
        time_scale: float,
        energy_counter: bool,
        seed: int = 0,
    ) -> None:
        self._client = client
        self._url = engine_url
        self._agent = agent
        self._vocab = max(vocab_size, _FIRST_TOKEN_ID + 1)
        self._time_scale = time_scale
        self._energy_counter = energy_counter
        self._gpus = len(agent.gpu_indices)
        self._rng = random.Random(seed)

    def prompt(self, tokens: int) -> list[int]:
        return [self._rng.randrange(_FIRST_TOKEN_ID, self._vocab) for _ in range(tokens)]

    # ---- power over a span -----------------------------------------------------------------

    async def _power_during(self, work: Awaitable[None]) -> tuple[float, float]:
        """(mean power per GPU, engine seconds elapsed) while ``work`` runs."""
        first = await self._agent.read()
        samples: list[GroupReading] = [first]
        poller = None
        if not self._energy_counter:
            poller = asyncio.create_task(self._poll_power(samples))
        try:
            await work
        finally:
            if poller is not None:
                poller.cancel()
                with contextlib.suppress(asyncio.CancelledError):
                    await poller
        last = await self._agent.read()
        elapsed_s = (last.timestamp_s - first.timestamp_s) * self._time_scale
        if elapsed_s <= 0:
            raise UnavailableError("the agent's sample timestamps did not advance")
        if self._energy_counter:
            total_w = (last.energy_j - first.energy_j) / elapsed_s
        else:
            total_w = statistics.fmean(s.power_w for s in [*samples, last])
        return total_w / self._gpus, elapsed_s

    async def _poll_power(self, samples: list[GroupReading]) -> None:
        while True:
            await asyncio.sleep(_POWER_POLL_S)
            samples.append(await self._agent.read())

    # ---- the three measurements ------------------------------------------------------------

    async def idle(self, window_s: float) -> float:
        """Draw per GPU with nothing running, over ``window_s`` wall seconds."""
        power_w, _ = await self._power_during(asyncio.sleep(window_s))
        return power_w

    async def prefill(
        self, tokens: int, *, window_s: float, min_repeats: int, idle_w: float
    ) -> Measured:
        """Prefills of ``tokens`` prompt tokens, one after another, for about ``window_s``.

        Between two requests the GPU idles (HTTP, tokenisation), so the power of the prefill
        itself is the energy minus the idle draw over the gaps, divided by the busy time.
        """
        latencies: list[float] = []

        async def run() -> None:
            deadline = time.monotonic() + window_s
            while len(latencies) < min_repeats or time.monotonic() < deadline:
                latencies.append(await self._one_prefill(tokens))

        mean_w, elapsed_s = await self._power_during(run())
        busy_s = min(sum(latencies), elapsed_s)
        latency_s = statistics.median(latencies)
        if busy_s <= 0:
            return Measured(latency_s, mean_w)
        power_w = (mean_w * elapsed_s - idle_w * (elapsed_s - busy_s)) / busy_s
        return Measured(latency_s, max(power_w, idle_w))

    async def _one_prefill(self, tokens: int) -> float:
        payload = {"input_ids": self.prompt(tokens), "sampling_params": {"max_new_tokens": 1}}
        started = time.monotonic()
        answer = await self._client.generate(self._url, payload)
        wall_s = time.monotonic() - started
        engine_s = answer.get("meta_info", {}).get("e2e_latency")
        if isinstance(engine_s, int | float) and engine_s > 0:
            return float(engine_s)
        return wall_s * self._time_scale

    async def decode(
        self,
        batch: int,
        context_tokens: int,
        *,
        max_new_tokens: int,
        window_s: float,
        timeout_s: float,
    ) -> DecodeMeasured:
        """``batch`` requests of ``context_tokens``-token prompts decoding together, measured
        for ``window_s`` (or until the first one finishes) once all of them decode.

        The requests do not stream (streaming thousands of cumulative chunks would make the
        client the bottleneck); the engine's own metrics give the inter-token time and KV use.
        """
        payload = {"sampling_params": {"max_new_tokens": max_new_tokens, "ignore_eos": True}}
        tasks = [
            asyncio.create_task(
                self._client.generate(
                    self._url, {**payload, "input_ids": self.prompt(context_tokens)}
                )
            )
            for _ in range(batch)
        ]
        window: list[_DecodeCounters] = []

        async def steady_window() -> None:
            window.append(await self._counters())
            deadline = time.monotonic() + window_s
            while time.monotonic() < deadline and not any(task.done() for task in tasks):
                await asyncio.sleep(0.01)
            window.append(await self._counters())

        try:
            await self._until_decoding(batch, timeout_s, tasks)
            power_w, _ = await self._power_during(steady_window())
        finally:
            for task in tasks:
                task.cancel()
            await asyncio.gather(*tasks, return_exceptions=True)
        start, end = window
        tokens = end.itl_count - start.itl_count
        if tokens <= 0:
            raise UnavailableError(
                f"the batch of {batch} produced no token in the window; lengthen --decode-window-s"
            )
        itl_s = (end.itl_sum_s - start.itl_sum_s) / tokens
        return DecodeMeasured(itl_s, power_w, round((start.kv_tokens + end.kv_tokens) / 2))

    async def _counters(self) -> _DecodeCounters:
        metrics = await self._metrics()
        for name in _ITL_HISTOGRAMS:
            if f"{name}_count" in metrics:
                return _DecodeCounters(
                    itl_sum_s=metrics[f"{name}_sum"],
                    itl_count=metrics[f"{name}_count"],
                    kv_tokens=metrics.get("sglang:num_used_tokens", 0.0),
                )
        raise FailedPreconditionError(
            f"{self._url}/metrics has no inter-token latency histogram "
            f"({' or '.join(_ITL_HISTOGRAMS)})"
        )

    async def _metrics(self) -> dict[str, float]:
        try:
            return await self._client.metrics(self._url)
        except EngineError as error:
            raise FailedPreconditionError(
                f"cannot read {self._url}/metrics ({error}); start SGLang with --enable-metrics"
            ) from None

    async def _until_decoding(
        self, batch: int, timeout_s: float, tasks: list[asyncio.Task[dict[str, Any]]]
    ) -> None:
        """Until every request of the batch decodes: all running, none queued, and the batch
        has made two full decode steps since."""
        deadline = time.monotonic() + timeout_s
        since: float | None = None
        while True:
            for task in tasks:
                if task.done() and not task.cancelled() and task.exception() is not None:
                    raise task.exception()  # type: ignore[misc]
            metrics = await self._metrics()
            running = metrics.get("sglang:num_running_reqs", 0.0)
            queued = metrics.get("sglang:num_queue_reqs", 0.0)
            generated = metrics.get("sglang:generation_tokens_total", 0.0)
            if running >= batch and queued == 0:
                if since is None:
                    since = generated
                elif generated - since >= 2 * batch:
                    return
            if time.monotonic() > deadline:
                raise UnavailableError(
                    f"the decode batch of {batch} did not start within {timeout_s:g} s (is the "
                    "instance busy, or its --max-running-requests below the batch?)"
                )
            await asyncio.sleep(_IDLE_POLL_S)

    async def wait_idle(self, timeout_s: float) -> None:
        """Until the engine runs and queues nothing (aborted streams take a moment)."""
        deadline = time.monotonic() + timeout_s
        while True:
            try:
                metrics = await self._client.metrics(self._url)
            except EngineError:
                return  # no /metrics (launched without --enable-metrics): nothing to wait on
            busy = metrics.get("sglang:num_running_reqs", 0) + metrics.get(
                "sglang:num_queue_reqs", 0
            )
            if busy == 0:
                return
            if time.monotonic() > deadline:
                raise UnavailableError(
                    f"the instance still runs {busy:g} request(s) after {timeout_s:g} s; "
                    "profile an instance nobody else sends work to"
                )
            await asyncio.sleep(_IDLE_POLL_S)
