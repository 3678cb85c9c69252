"""SimStack end to end: the whole stack in process over loopback gRPC/HTTP with a real Redis.

The SDK streams tokens through the router; the voltana-paper policy moves real agents' clocks on
the engines' simulated GPUs as load comes and goes; telemetry's state lands in Redis; stopping
leaves every GPU at its default clock.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Protocol

import pytest
import redis.asyncio as aioredis

from voltana.contract.state import InstanceState, Phase, SloTarget
from voltana.errors import ConfigError
from voltana.sdk import GenerationSummary, TokenEvent, VoltanaClient
from voltana.stack import SimStack, SimStackSettings, TelemetryInstanceSink

SPEEDUP = 10.0


class RedisServer(Protocol):
    """What the ``redis_server`` fixture of conftest.py hands out."""

    @property
    def url(self) -> str: ...


WAIT_TIMEOUT_S = 8.0


async def wait_for(
    condition: Callable[[], bool], what: str, timeout_s: float = WAIT_TIMEOUT_S
) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + timeout_s
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def fast_settings(**overrides: object) -> SimStackSettings:
    options: dict[str, object] = {
        "prefill": 2,
        "decode": 2,
        "policy": "voltana-paper",
        "speedup": SPEEDUP,
        "report_interval_ms": 100.0,
        "sample_interval_ms": 100,
        "snapshot_interval_ms": 50,
        "drain_timeout_s": 0.5,
    }
    options.update(overrides)
    return SimStackSettings(**options)  # type: ignore[arg-type]


@pytest.fixture
async def redis_stack(redis_server: RedisServer) -> AsyncIterator[tuple[SimStack, str]]:
    prefix = f"voltana-test-{uuid.uuid4().hex[:8]}:"
    stack = SimStack(fast_settings(redis_url=redis_server.url, redis_key_prefix=prefix))
    await stack.start()
    try:
        yield stack, prefix
    finally:
        await stack.stop()


@pytest.mark.e2e
async def test_whole_stack_serves_controls_clocks_and_resets_them(
    redis_stack: tuple[SimStack, str], redis_server: RedisServer
) -> None:
    stack, prefix = redis_stack
    gpus = {instance.instance_id: instance.gpu for instance in stack.instances}
    assert sorted(gpus) == ["decode-0", "decode-1", "prefill-0", "prefill-1"]
    assert next(iter(stack.addresses)) == "router"
    default_mhz = next(iter(gpus.values())).default_sm_clock_mhz

    # Idle: voltana-paper puts every GPU at its lowest candidate clock.
    await wait_for(
        lambda: all(gpu.sm_clock_mhz() < default_mhz for gpu in gpus.values()),
        "the controller to lower idle clocks",
    )
    idle_mhz = {name: gpu.sm_clock_mhz() for name, gpu in gpus.items()}

    async with VoltanaClient(stack.router_address, timeout_s=30.0) as client:
        # One streamed generation: tokens arrive as events, then the summary.
        events = [
            event
            async for event in client.generate(
                input_ids=list(range(100, 356)), max_new_tokens=16, ignore_eos=True
            )
        ]
        tokens = [event for event in events if isinstance(event, TokenEvent)]
        summary = events[-1]
        assert isinstance(summary, GenerationSummary)
        assert summary.finish_reason == "length"
        assert summary.completion_tokens == 16
        assert len(tokens) > 1 and sum(len(t.token_ids) for t in tokens) == 16
        assert "".join(t.text for t in tokens).strip()

        # A burst of long prompts queues up at prefill: its clocks go to the maximum.
        peak_mhz: dict[str, int] = dict.fromkeys(gpus, 0)
        burst_done = asyncio.Event()

        async def watch_clocks() -> None:
            while not burst_done.is_set():
                for name, gpu in gpus.items():
                    peak_mhz[name] = max(peak_mhz[name], gpu.sm_clock_mhz())
                await asyncio.sleep(0.005)

        watcher = asyncio.create_task(watch_clocks())
        burst = [
            client.generate(
                input_ids=[1000 + i] * 8000, max_new_tokens=4, ignore_eos=True, stream=False
            )
            for i in range(48)
        ]
        results = await asyncio.gather(*burst)
        burst_done.set()
        await watcher
        assert all(result.summary.completion_tokens == 4 for result in results)
        prefill_peaks = [peak_mhz[name] for name in gpus if name.startswith("prefill")]
        assert max(prefill_peaks) == default_mhz, (idle_mhz, peak_mhz)

    # Load gone: the clocks come back down.
    await wait_for(
        lambda: all(gpu.sm_clock_mhz() < default_mhz for gpu in gpus.values()),
        "clocks to drop again after the burst",
    )

    # Telemetry keeps every instance's registration, load and GPU sample in Redis.
    redis = aioredis.from_url(redis_server.url, decode_responses=True)
    try:
        members = await redis.smembers(f"{prefix}instances")
        assert members == set(gpus)
        for instance_id in gpus:
            info = await redis.hgetall(f"{prefix}info:{instance_id}")
            state = await redis.hgetall(f"{prefix}state:{instance_id}")
            gpu_sample = await redis.hgetall(f"{prefix}gpu:{instance_id}")
            assert info and state and gpu_sample, instance_id
            assert float(gpu_sample["sm_clock_mhz"]) > 0
            assert float(gpu_sample["energy_j"]) > 0
    finally:
        await redis.aclose()

    await stack.stop()
    for name, gpu in gpus.items():
        assert gpu.locked_range_mhz is None, f"{name} is still locked at {gpu.locked_range_mhz}"
    await wait_for(
        lambda: all(gpu.sm_clock_mhz() == default_mhz for gpu in gpus.values()),
        "every GPU back at its default clock",
        timeout_s=1.0,
    )


@pytest.mark.e2e
async def test_stack_in_memory_reports_addresses_and_stops_idempotently() -> None:
    stack = SimStack(fast_settings(prefill=1, decode=1, policy="static-max"))
    await stack.start()
    try:
        addresses = stack.addresses
        assert list(addresses)[:3] == ["router", "telemetry", "controller"]
        assert addresses["prefill-0.engine"].startswith("http://127.0.0.1:")
        assert addresses["prefill-0.bootstrap"].startswith("127.0.0.1:")
        assert "decode-0.bootstrap" not in addresses
        assert {key for key in addresses if key.endswith(".agent")} == {
            "prefill-0.agent",
            "decode-0.agent",
        }
    finally:
        await stack.stop()
    await stack.stop()  # a second stop does nothing


@pytest.mark.e2e
async def test_stack_with_two_routers_serves_through_either_and_survives_one_stopping() -> None:
    stack = SimStack(fast_settings(prefill=1, decode=1, policy="static-max", routers=2))
    await stack.start()
    try:
        addresses = stack.addresses
        assert [addresses["router"], addresses["router-1"]] == stack.router_addresses
        assert [router.router_id for router in stack.routers] == ["router-0", "router-1"]
        async with VoltanaClient(stack.router_addresses, timeout_s=20.0) as client:
            for _ in range(4):  # round-robin: both routers serve
                result = await client.generate("hello", max_new_tokens=3, stream=False)
                assert result.summary.completion_tokens == 3
            served = [
                router.metrics_registry.get_sample_value(
                    "voltana_router_requests_total", {"protocol": "grpc", "status": "OK"}
                )
                for router in stack.routers
            ]
            assert served == [2.0, 2.0]
            await stack.routers[0].stop()
            for _ in range(3):  # the other takes every request at once
                result = await client.generate("hello", max_new_tokens=3, stream=False)
                assert result.summary.completion_tokens == 3
    finally:
        await stack.stop()


@pytest.mark.e2e
async def test_unknown_policy_fails_before_anything_starts() -> None:
    stack = SimStack(fast_settings(policy="no-such-policy"))
    with pytest.raises(ConfigError, match="no-such-policy"):
        await stack.start()
    assert stack.telemetry is None and not stack.instances


@pytest.mark.unit
@pytest.mark.parametrize(
    ("field", "value"),
    [
        ("prefill", 0),
        ("decode", 0),
        ("routers", 0),
        ("speedup", 0.0),
        ("gpu_key", "gpu-9000"),
        ("router_port", -1),
    ],
)
def test_settings_reject_bad_values(field: str, value: object) -> None:
    with pytest.raises(ConfigError):
        SimStackSettings(**{field: value})  # type: ignore[arg-type]


@pytest.mark.unit
def test_sink_moves_engine_timestamps_onto_wall_time() -> None:
    engine_now = 500.0
    sink = TelemetryInstanceSink(
        client=None,  # type: ignore[arg-type]  # restamp never calls the client
        engine_clock=lambda: engine_now,
        speedup=10.0,
        wall_clock=lambda: 1_700_000_000.0,
    )
    state = InstanceState(
        "decode-0",
        Phase.DECODE,
        "a100-80g",
        1410,
        observed_at_s=500.0,
        last_activity_s=480.0,  # 20 simulated s ago = 2 wall s at 10x
        recent_itl_ms=12.0,
    )
    restamped = sink.restamp(state)
    assert restamped.observed_at_s == pytest.approx(1_700_000_000.0)
    assert restamped.last_activity_s == pytest.approx(1_699_999_998.0)
    assert restamped.recent_itl_ms == 12.0  # latencies stay simulated
    assert sink.restamp(InstanceState("x", Phase.DECODE, "a100-80g", 0)).last_activity_s == 0.0


@pytest.mark.unit
def test_settings_slo_is_checked() -> None:
    with pytest.raises(ConfigError):
        SimStackSettings(slo=SloTarget(ttft_ms=0.0))
