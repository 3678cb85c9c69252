"""The fast cases of bench/faults.py as tests: an engine process killed mid-stream costs only its
in-flight request, and `voltana up` (SimStack) leaves no registration behind in Redis."""

from __future__ import annotations

import asyncio
import contextlib
import os
import sys
import time
from collections.abc import AsyncIterator

import pytest
from conftest import RedisServer, free_port, wait_for
from security_helpers import SECURITY, TEST_TOKEN

from voltana.contract.state import InstanceState, Phase
from voltana.engine import SimEngine, SimEngineSettings
from voltana.rpc.auth import TOKEN_ENV
from voltana.sdk import TokenEvent, UnavailableError, VoltanaClient
from voltana.services.router import RouterService, RouterSettings
from voltana.services.telemetry import (
    InstanceInfo,
    RedisTelemetryStore,
    TelemetryClient,
    TelemetryService,
    TelemetrySettings,
)
from voltana.stack import SimStack, SimStackSettings


class SampleSink:
    def __init__(self, client: TelemetryClient) -> None:
        self._client = client

    async def send(self, state: InstanceState) -> None:
        await self._client.report_instance_samples([state])


async def start_engine(
    stack: contextlib.AsyncExitStack, client: TelemetryClient, instance_id: str, phase: Phase
) -> None:
    """An in-process simulated engine, registered with telemetry."""
    engine = await stack.enter_async_context(
        SimEngine(
            SimEngineSettings(mode=phase.value, instance_id=instance_id, speedup=20.0),
            sample_sink=SampleSink(client),
        )
    )
    is_prefill = phase is Phase.PREFILL
    await client.register_instance(
        InstanceInfo(
            instance_id,
            phase,
            "a100-80g",
            engine_url=engine.url,
            bootstrap_host=engine.bootstrap_host if is_prefill else "",
            bootstrap_port=engine.bootstrap_port if is_prefill else 0,
        )
    )


@contextlib.asynccontextmanager
async def engine_process(
    telemetry: str, instance_id: str
) -> AsyncIterator[asyncio.subprocess.Process]:
    """`voltana serve engine` (decode, registered with telemetry), slow enough to cut mid-stream."""
    port = free_port()
    # fmt: off
    process = await asyncio.create_subprocess_exec(
        sys.executable, "-m", "voltana.cli.main", "serve", "engine",
        "--listen", f"127.0.0.1:{port}", "--mode", "decode", "--instance-id", instance_id,
        "--telemetry", telemetry, "--speedup", "2", "--report-interval-ms", "50",
        "--no-metrics",
        env={**os.environ, TOKEN_ENV: TEST_TOKEN},
    )
    # fmt: on
    try:
        yield process
    finally:
        if process.returncode is None:
            process.kill()
            await process.wait()


@pytest.mark.e2e
async def test_a_killed_engine_costs_only_its_in_flight_request() -> None:
    async with contextlib.AsyncExitStack() as stack:
        telemetry = await stack.enter_async_context(
            TelemetryService(TelemetrySettings(watch_min_interval_ms=20, security=SECURITY))
        )
        client = await stack.enter_async_context(
            TelemetryClient(telemetry.address, security=SECURITY)
        )
        await start_engine(stack, client, "prefill-0", Phase.PREFILL)
        doomed = await stack.enter_async_context(engine_process(telemetry.address, "decode-1"))
        router = await stack.enter_async_context(
            RouterService(
                RouterSettings(
                    telemetry_address=telemetry.address,
                    snapshot_interval_ms=20,
                    initial_snapshot_timeout_s=0.0,
                    security=SECURITY,
                )
            )
        )
        await wait_for(lambda: router.cluster.placeable(), "decode-1 to register", 30.0)
        sdk = await stack.enter_async_context(VoltanaClient(router.address))

        stream = sdk.generate("a long story", max_new_tokens=5000)
        assert isinstance(await anext(stream), TokenEvent)  # in flight on decode-1
        await start_engine(stack, client, "decode-0", Phase.DECODE)
        await wait_for(lambda: "decode-0" in router.cluster.endpoints, "decode-0 in routing")

        doomed.kill()
        killed_at = time.monotonic()
        with pytest.raises(UnavailableError):
            async for _ in stream:
                pass
        # Every later request succeeds on the survivor: none is lost to the dead engine.
        results = [
            await sdk.generate(f"after {i}", max_new_tokens=4, stream=False) for i in range(6)
        ]
        assert {r.summary.decode_instance for r in results} == {"decode-0"}
        assert time.monotonic() - killed_at < 10.0
        assert "decode-1" in router.cluster.ejected


@pytest.mark.e2e
async def test_a_stopped_stack_leaves_no_registration_in_redis(redis_server: RedisServer) -> None:
    prefix = f"stack-stop-{os.getpid()}:"
    settings = SimStackSettings(
        prefill=1,
        decode=1,
        speedup=20.0,
        redis_url=redis_server.url,
        redis_key_prefix=prefix,
        security=SECURITY,
    )
    async with SimStack(settings):
        pass
    store = RedisTelemetryStore.from_url(redis_server.url, clock=time.time, key_prefix=prefix)
    try:
        assert await store.instance_infos() == {}
    finally:
        await store.close()
