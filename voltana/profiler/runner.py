"""The profile sweep: clocks x prompt lengths (prefill) x batch sizes x contexts (decode)."""

from __future__ import annotations

import asyncio
import datetime
import math
import socket
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field

import aiohttp

from voltana.engine import SglangHttpClient
from voltana.errors import ConfigError, FailedPreconditionError
from voltana.hardware.models import ModelSpec
from voltana.perf.measured import MeasuredProfile, ProfiledGpu, ProfileMetadata
from voltana.perf.profile import ProfilePoint, ProfileTable
from voltana.profiler.agent_clocks import AgentClockControl
from voltana.profiler.measure import Measurer
from voltana.rpc import RpcSecurity

Progress = Callable[[str], None]

DEFAULT_PROMPT_TOKENS = (128, 512, 2048, 4096)
DEFAULT_BATCH_SIZES = (1, 8, 32, 64, 128)
DEFAULT_CONTEXT_TOKENS = (512, 2048)
# A decode batch holds at most this share of the KV cache, each request generating between
# these many tokens (enough for the measurement window, short enough to stay steady).
_KV_HEADROOM = 0.8
_MIN_DECODE_TOKENS = 64
_MAX_DECODE_TOKENS = 4096


@dataclass(frozen=True)
class ProfileSettings:
    engine_url: str
    agent_address: str
    # The instance's GPUs on that agent (several for a tensor-parallel instance).
    gpu_indices: tuple[int, ...] = (0,)
    # The model the instance serves (ModelSpec.tensor_parallel = the instance's TP degree).
    model: ModelSpec | None = None
    # Clocks to profile; empty = ``clock_count`` clocks spread over the upper half of the range.
    clocks_mhz: tuple[int, ...] = ()
    clock_count: int = 5
    prompt_tokens: tuple[int, ...] = DEFAULT_PROMPT_TOKENS
    batch_sizes: tuple[int, ...] = DEFAULT_BATCH_SIZES
    context_tokens: tuple[int, ...] = DEFAULT_CONTEXT_TOKENS
    # Wall seconds per measurement (engine seconds are these x the engine's speedup).
    idle_window_s: float = 1.0
    prefill_window_s: float = 1.0
    prefill_min_repeats: int = 3
    decode_window_s: float = 2.0
    # After a clock change, before measuring (the clock and the power reading settle).
    settle_s: float = 0.5
    # Longest a decode batch may take to start, and the instance to drain between runs.
    start_timeout_s: float = 120.0
    security: RpcSecurity | None = None
    holder: str = field(default_factory=lambda: f"profile@{socket.gethostname()}")
    lease_ttl_ms: int = 10_000
    seed: int = 0

    def __post_init__(self) -> None:
        if not self.gpu_indices or any(index < 0 for index in self.gpu_indices):
            raise ConfigError(f"GPU indices must be >= 0, got {self.gpu_indices}")
        for name in ("prompt_tokens", "batch_sizes", "context_tokens"):
            values = getattr(self, name)
            if not values or any(value < 1 for value in values):
                raise ConfigError(f"{name} must be a non-empty list of numbers >= 1")
        if self.clock_count < 1 or any(clock < 1 for clock in self.clocks_mhz):
            raise ConfigError("clocks must be >= 1 MHz and clock_count >= 1")
        for name in ("idle_window_s", "prefill_window_s", "decode_window_s", "start_timeout_s"):
            value = getattr(self, name)
            if not (math.isfinite(value) and value > 0):
                raise ConfigError(f"{name} must be a finite number > 0, got {value}")
        if self.settle_s < 0 or self.prefill_min_repeats < 1:
            raise ConfigError("settle_s must be >= 0 and prefill_min_repeats >= 1")


def choose_clocks(supported_mhz: Sequence[int], default_mhz: int, count: int) -> tuple[int, ...]:
    """``count`` supported clocks spread evenly from half the default clock to the default.

    Below half the default, prefill gets slow and the energy per token rises again on every GPU
    we know of (docs/calibration.md), so a profile rarely needs it; ask with --clocks.
    """
    candidates = sorted(c for c in supported_mhz if default_mhz / 2 <= c <= default_mhz)
    if not candidates:
        return (default_mhz,)
    if count == 1 or len(candidates) == 1:
        return (candidates[-1],)
    picks = {
        candidates[round(i * (len(candidates) - 1) / (count - 1))]
        for i in range(min(count, len(candidates)))
    }
    return tuple(sorted(picks | {candidates[-1]}))


class Profiler:
    """Runs one profile. ``progress`` gets one line per step (the CLI prints them to stderr)."""

    def __init__(self, settings: ProfileSettings, progress: Progress | None = None) -> None:
        self._settings = settings
        self._progress = progress or (lambda line: None)

    async def run(self) -> MeasuredProfile:
        settings = self._settings
        # No connection limit: a decode batch keeps `batch` requests open while /metrics polls.
        session = aiohttp.ClientSession(
            connector=aiohttp.TCPConnector(limit=0),
            timeout=aiohttp.ClientTimeout(total=None, sock_connect=10.0),
        )
        async with session, SglangHttpClient(session=session) as client:
            info = await client.server_info(settings.engine_url)
            mode = str(info.get("disaggregation_mode") or "null")
            if mode != "null":
                raise ConfigError(
                    f"{settings.engine_url} runs in --disaggregation-mode {mode}; profile a "
                    "regular instance (no --disaggregation-mode) of the same model and TP"
                )
            model = self._model(info)
            async with AgentClockControl(
                settings.agent_address,
                settings.gpu_indices,
                security=settings.security,
                holder=settings.holder,
                lease_ttl_ms=settings.lease_ttl_ms,
            ) as agent:
                gpus, driver = await agent.describe()
                first = gpus[0]
                energy_counter = all(gpu.energy_counter_supported for gpu in gpus)
                time_scale = _engine_speedup(info)
                clocks = settings.clocks_mhz or choose_clocks(
                    first.supported_sm_clocks_mhz,
                    first.default_sm_clock_mhz or first.max_sm_clock_mhz,
                    settings.clock_count,
                )
                unsupported = sorted(set(clocks) - set(first.supported_sm_clocks_mhz))
                if unsupported:
                    raise ConfigError(
                        f"clock(s) {unsupported} MHz not supported by {first.name} "
                        f"({first.min_sm_clock_mhz}-{first.max_sm_clock_mhz} MHz)"
                    )
                kv_capacity = int(info.get("max_total_num_tokens") or 0)
                if kv_capacity <= 0:
                    raise FailedPreconditionError(
                        f"{settings.engine_url} does not report max_total_num_tokens"
                    )
                measurer = Measurer(
                    client,
                    settings.engine_url,
                    agent,
                    vocab_size=model.vocab_size,
                    time_scale=time_scale,
                    energy_counter=energy_counter,
                    seed=settings.seed,
                )
                self._progress(
                    f"profiling {first.name} GPU(s) {list(settings.gpu_indices)} on "
                    f"{settings.agent_address}, {info.get('model_path', '?')} TP{model.tensor_parallel}"
                    f" at {settings.engine_url}; clocks {list(clocks)} MHz"
                    + (f"; engine sped up x{time_scale:g}" if time_scale != 1 else "")
                    + ("" if energy_counter else "; no energy counter: averaging power samples")
                )
                points = await self._sweep(
                    measurer, agent, clocks, kv_capacity, int(info.get("max_running_requests") or 0)
                )
            self._progress("clocks back at their defaults")
        metadata = ProfileMetadata(
            gpu=ProfiledGpu(
                name=first.name,
                key=first.gpu_key,
                supported_sm_clocks_mhz=tuple(first.supported_sm_clocks_mhz),
                default_sm_clock_mhz=first.default_sm_clock_mhz,
                power_limit_w=first.power_limit_w,
                driver_version=driver,
                energy_counter=energy_counter,
            ),
            model=model,
            kv_capacity_tokens=kv_capacity,
            max_running_requests=int(info.get("max_running_requests") or 0),
            model_path=str(info.get("model_path", "")),
            sglang_version=str(info.get("version", "")),
            engine_url=settings.engine_url,
            created_at=datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
            power_source="energy counter" if energy_counter else "power samples",
            notes={"engine_speedup": time_scale} if time_scale != 1 else {},
        )
        return MeasuredProfile(ProfileTable(tuple(points)), metadata)

    def _model(self, info: dict[str, object]) -> ModelSpec:
        model = self._settings.model
        if model is None:
            raise ConfigError("name the model the instance serves (--model or --model-config)")
        tp = int(str(info.get("tp_size") or model.tensor_parallel))
        gpus = len(self._settings.gpu_indices)
        if tp != gpus:
            raise ConfigError(
                f"the instance runs TP{tp} but {gpus} GPU(s) were named; name all of its GPUs"
            )
        return model.with_tensor_parallel(tp)

    async def _sweep(
        self,
        measurer: Measurer,
        agent: AgentClockControl,
        clocks: Sequence[int],
        kv_capacity: int,
        max_running: int,
    ) -> list[ProfilePoint]:
        settings = self._settings
        points: list[ProfilePoint] = []
        decode_runs = [
            (batch, context)
            for batch in settings.batch_sizes
            for context in settings.context_tokens
            if self._decode_fits(batch, context, kv_capacity, max_running)
        ]
        skipped = len(settings.batch_sizes) * len(settings.context_tokens) - len(decode_runs)
        if skipped:
            self._progress(
                f"skipping {skipped} batch/context pair(s) beyond the instance's KV capacity "
                f"({kv_capacity} tokens) or batch limit ({max_running or 'unknown'})"
            )
        for step, clock in enumerate(sorted(clocks, reverse=True), start=1):
            label = f"[{step}/{len(clocks)} {clock} MHz]"
            applied = await agent.set_clock(clock, "voltana profile")
            await measurer.wait_idle(settings.start_timeout_s)
            await asyncio.sleep(settings.settle_s)
            idle_w = await measurer.idle(settings.idle_window_s)
            points.append(ProfilePoint("idle", applied, 0, 0, 0.0, idle_w))
            self._progress(f"{label} idle {idle_w:.1f} W")
            for tokens in settings.prompt_tokens:
                result = await measurer.prefill(
                    tokens,
                    window_s=settings.prefill_window_s,
                    min_repeats=settings.prefill_min_repeats,
                    idle_w=idle_w,
                )
                points.append(
                    ProfilePoint(
                        "prefill", applied, 1, tokens, result.latency_s * 1e3, result.power_w
                    )
                )
                self._progress(
                    f"{label} prefill {tokens} tokens: {result.latency_s * 1e3:.2f} ms, "
                    f"{result.power_w:.1f} W"
                )
            for batch, context in decode_runs:
                await measurer.wait_idle(settings.start_timeout_s)
                decode = await measurer.decode(
                    batch,
                    context,
                    max_new_tokens=self._decode_tokens(batch, context, kv_capacity),
                    window_s=settings.decode_window_s,
                    timeout_s=settings.start_timeout_s,
                )
                points.append(
                    ProfilePoint(
                        "decode",
                        applied,
                        batch,
                        decode.kv_tokens,
                        decode.latency_s * 1e3,
                        decode.power_w,
                    )
                )
                self._progress(
                    f"{label} decode batch {batch} x {context}-token context: "
                    f"{decode.latency_s * 1e3:.2f} ms/token, {decode.power_w:.1f} W "
                    f"({decode.kv_tokens} KV tokens)"
                )
        return points

    def _decode_fits(self, batch: int, context: int, kv_capacity: int, max_running: int) -> bool:
        if max_running and batch > max_running:
            return False
        return self._decode_tokens(batch, context, kv_capacity) >= _MIN_DECODE_TOKENS

    def _decode_tokens(self, batch: int, context: int, kv_capacity: int) -> int:
        """Tokens each request of a decode batch may generate: the whole batch must fit in
        the KV cache with room to spare (engines admit a request only when its prompt and
        output fit), and within the model's context."""
        model = self._settings.model
        context_limit = model.max_context_tokens if model is not None else 1 << 30
        room = int(_KV_HEADROOM * kv_capacity) // batch - context
        return min(room, context_limit - context, _MAX_DECODE_TOKENS)


def _engine_speedup(info: dict[str, object]) -> float:
    """A simulated engine runs ``speedup`` x faster than wall time; real SGLang does not."""
    sim = info.get("voltana_sim")
    if isinstance(sim, dict):
        speedup = sim.get("speedup")
        if isinstance(speedup, int | float) and speedup > 0:
            return float(speedup)
    return 1.0
