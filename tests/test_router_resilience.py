"""The router when engines fail: passive and active health, retries before the first token,
honest status codes, drains, every outcome recorded, and no connection-pool queueing.

Real TelemetryService (memory store), real simulated SGLang engines, the router and the SDK on
loopback; a "dead engine" is an instance registered at a port nobody listens on.
"""

from __future__ import annotations

import asyncio
import contextlib
import time
from collections.abc import AsyncIterator
from dataclasses import dataclass, field
from typing import Any

import aiohttp
import grpc
import pytest
from conftest import free_port, wait_for
from grpc_health.v1 import health_pb2, health_pb2_grpc
from security_helpers import SECURITY

from voltana.contract.state import InstanceState, Phase
from voltana.engine import SglangHttpClient, SimEngine, SimEngineSettings
from voltana.lifecycle import cancel_and_wait
from voltana.rpc import create_channel
from voltana.rpc.names import ROUTER_SERVICE
from voltana.sdk import TokenEvent, UnavailableError, VoltanaClient
from voltana.services.router import RouterService, RouterSettings
from voltana.services.telemetry import (
    Completion,
    InstanceInfo,
    MemoryTelemetryStore,
    TelemetryClient,
    TelemetryService,
    TelemetrySettings,
)

pytestmark = pytest.mark.integration

FAST_SPEEDUP = 50.0
SLOW_SPEEDUP = 5.0
WAIT_TIMEOUT_S = 5.0


class RecordingStore(MemoryTelemetryStore):
    def __init__(self) -> None:
        super().__init__(clock=time.time)
        self.completions: list[Completion] = []

    async def record_completion(self, completion: Completion) -> None:
        self.completions.append(completion)
        await super().record_completion(completion)


class SampleSink:
    def __init__(self, client: TelemetryClient) -> None:
        self._client = client

    async def send(self, state: InstanceState) -> None:
        await self._client.report_instance_samples([state])


@dataclass
class Cluster:
    store: RecordingStore
    telemetry_client: TelemetryClient
    router: RouterService
    client: VoltanaClient
    engines: dict[str, SimEngine] = field(default_factory=dict)

    async def completions(self, count: int) -> list[Completion]:
        await wait_for(lambda: len(self.store.completions) >= count, "completion reports")
        return list(self.store.completions)


def info_for(instance_id: str, phase: Phase, url: str, bootstrap_port: int = 0) -> InstanceInfo:
    return InstanceInfo(
        instance_id,
        phase,
        "a100-80g",
        engine_url=url,
        bootstrap_host="127.0.0.1" if phase is Phase.PREFILL else "",
        bootstrap_port=bootstrap_port,
    )


async def start_engine(
    cluster: Cluster, stack: contextlib.AsyncExitStack, instance_id: str, phase: Phase, **kw: Any
) -> SimEngine:
    engine = SimEngine(
        SimEngineSettings(mode=phase.value, instance_id=instance_id, report_interval_ms=50.0, **kw),
        sample_sink=SampleSink(cluster.telemetry_client),
    )
    await stack.enter_async_context(engine)
    await cluster.telemetry_client.register_instance(
        info_for(
            instance_id,
            phase,
            engine.url,
            engine.bootstrap_port if phase is Phase.PREFILL else 0,
        )
    )
    cluster.engines[instance_id] = engine
    return engine


@contextlib.asynccontextmanager
async def running_cluster(
    *,
    prefills: int = 1,
    decodes: int = 1,
    speedup: float = FAST_SPEEDUP,
    engine_drain_s: float = 0.5,
    **router_options: Any,
) -> AsyncIterator[tuple[Cluster, contextlib.AsyncExitStack]]:
    async with contextlib.AsyncExitStack() as stack:
        store = RecordingStore()
        telemetry = await stack.enter_async_context(
            TelemetryService(
                TelemetrySettings(watch_min_interval_ms=20, security=SECURITY), store=store
            )
        )
        telemetry_client = await stack.enter_async_context(
            TelemetryClient(telemetry.address, security=SECURITY)
        )
        router_options.setdefault("health_check_interval_s", 0.0)
        router = RouterService(
            RouterSettings(
                telemetry_address=telemetry.address,
                snapshot_interval_ms=20,
                initial_snapshot_timeout_s=0.0,
                security=SECURITY,
                **router_options,
            )
        )
        cluster = Cluster(store, telemetry_client, router, VoltanaClient("unused:1"))
        for phase, count in ((Phase.PREFILL, prefills), (Phase.DECODE, decodes)):
            for index in range(count):
                await start_engine(
                    cluster,
                    stack,
                    f"{phase.value}-{index}",
                    phase,
                    speedup=speedup,
                    drain_timeout_s=engine_drain_s,
                )
        await stack.enter_async_context(router)
        await wait_for(
            lambda: router.cluster.endpoints.keys() >= cluster.engines.keys(),
            "the router to see every engine",
        )
        cluster.client = await stack.enter_async_context(VoltanaClient(router.address))
        yield cluster, stack


async def register_dead(cluster: Cluster, instance_id: str, phase: Phase) -> int:
    port = free_port()
    await cluster.telemetry_client.register_instance(
        info_for(instance_id, phase, f"http://127.0.0.1:{port}", port)
    )
    await wait_for(
        lambda: instance_id in cluster.router.cluster.endpoints, f"the router to see {instance_id}"
    )
    return port


# ---- dead engines ----------------------------------------------------------------------------


@pytest.mark.parametrize("phase", [Phase.DECODE, Phase.PREFILL])
async def test_a_dead_engine_is_ejected_and_its_requests_go_elsewhere(phase: Phase) -> None:
    async with running_cluster(router="round-robin") as (cluster, _):
        await register_dead(cluster, f"{phase.value}-dead", phase)

        results = [
            await cluster.client.generate(f"request {i}", max_new_tokens=4, stream=False)
            for i in range(6)
        ]

        # Round-robin sent one request to the dead engine: it was placed again, and the
        # engine was taken out of routing at once, so no later request went there.
        assert all(len(result.token_ids) == 4 for result in results)
        assert cluster.router.servicer is not None and cluster.router.servicer.retries == 1
        assert f"{phase.value}-dead" in cluster.router.cluster.ejected
        records = await cluster.completions(6)
        assert all(record.ok and record.status == "OK" for record in records)
        assert all(f"{phase.value}-dead" not in record.instance_ids for record in records)


async def test_when_every_engine_of_a_phase_is_dead_the_request_fails_unavailable() -> None:
    async with running_cluster(decodes=0) as (cluster, _):
        await register_dead(cluster, "decode-dead", Phase.DECODE)

        with pytest.raises(UnavailableError, match="cannot connect") as raised:
            await cluster.client.generate("hello", max_new_tokens=4, stream=False)

        assert raised.value.code == grpc.StatusCode.UNAVAILABLE
        (record,) = await cluster.completions(1)
        assert (record.ok, record.status) == (False, "UNAVAILABLE")


async def test_probes_eject_a_silent_engine_and_readmit_it_once_it_answers() -> None:
    async with running_cluster(
        router="round-robin", health_check_interval_s=0.05, unhealthy_after=2, healthy_after=2
    ) as (cluster, stack):
        port = await register_dead(cluster, "decode-late", Phase.DECODE)
        await wait_for(lambda: "decode-late" in cluster.router.cluster.ejected, "the ejection")

        # The engine comes up at the registered address; two passed probes readmit it.
        await stack.enter_async_context(
            SimEngine(SimEngineSettings(mode="decode", port=port, speedup=FAST_SPEEDUP))
        )
        await wait_for(lambda: "decode-late" not in cluster.router.cluster.ejected, "readmission")
        results = [
            await cluster.client.generate(f"request {i}", max_new_tokens=4, stream=False)
            for i in range(4)
        ]
        assert {r.summary.decode_instance for r in results} == {"decode-0", "decode-late"}
        health = cluster.router.engine_health
        assert health is not None and (health.ejections, health.readmissions) == (1, 1)


# ---- aborts and drains -----------------------------------------------------------------------


async def test_an_engine_abort_mid_stream_is_an_error_status_not_a_short_answer() -> None:
    async with running_cluster(speedup=SLOW_SPEEDUP) as (cluster, _):
        stream = cluster.client.generate("a long story", max_new_tokens=5000)
        assert isinstance(await anext(stream), TokenEvent)
        async with (
            aiohttp.ClientSession() as session,
            session.post(
                f"{cluster.engines['decode-0'].url}/abort_request", json={"abort_all": True}
            ) as response,
        ):
            assert response.status == 200

        with pytest.raises(UnavailableError, match="aborted") as raised:
            async for _ in stream:
                pass
        assert raised.value.code == grpc.StatusCode.UNAVAILABLE
        (record,) = await cluster.completions(1)
        assert (record.ok, record.status) == (False, "UNAVAILABLE")
        assert record.output_tokens >= 1


async def test_an_engine_stopping_mid_generation_ends_the_stream_with_unavailable() -> None:
    async with running_cluster(speedup=SLOW_SPEEDUP, engine_drain_s=0.2) as (cluster, _):
        stream = cluster.client.generate("a long story", max_new_tokens=5000)
        assert isinstance(await anext(stream), TokenEvent)

        stopping = asyncio.create_task(cluster.engines["decode-0"].stop())
        with pytest.raises(UnavailableError, match="shutting down"):
            async for _ in stream:
                pass
        await stopping
        (record,) = await cluster.completions(1)
        assert record.status == "UNAVAILABLE"


async def test_router_stop_ends_requests_past_the_drain_and_records_them() -> None:
    async with running_cluster(speedup=SLOW_SPEEDUP, shutdown_grace_s=0.3) as (cluster, _):
        stream = cluster.client.generate("a long story", max_new_tokens=5000)
        assert isinstance(await anext(stream), TokenEvent)

        stopping = asyncio.create_task(cluster.router.stop())
        with pytest.raises(UnavailableError, match="router shut down") as raised:
            async for _ in stream:
                pass
        await stopping

        assert raised.value.code == grpc.StatusCode.UNAVAILABLE
        # Reported before the router let go of telemetry.
        (record,) = cluster.store.completions
        assert (record.ok, record.status) == (False, "UNAVAILABLE")
        assert "router shut down" in record.reason


# ---- health and capacity ---------------------------------------------------------------------


async def router_health(address: str) -> int:
    async with create_channel(address, security=SECURITY) as channel:
        stub = health_pb2_grpc.HealthStub(channel)
        response = await stub.Check(health_pb2.HealthCheckRequest(service=ROUTER_SERVICE))
        return int(response.status)


async def test_router_health_is_not_serving_while_nothing_can_be_placed() -> None:
    serving = health_pb2.HealthCheckResponse.SERVING
    not_serving = health_pb2.HealthCheckResponse.NOT_SERVING

    async def wait_for_health(address: str, status: int) -> None:
        deadline = time.monotonic() + WAIT_TIMEOUT_S
        while (current := await router_health(address)) != status:
            assert time.monotonic() < deadline, f"health stayed {current}"
            await asyncio.sleep(0.05)

    async with running_cluster() as (cluster, _):
        address = cluster.router.address
        await wait_for_health(address, serving)

        await cluster.telemetry_client.unregister_instance("decode-0")
        await wait_for_health(address, not_serving)

        engine = cluster.engines["decode-0"]
        await cluster.telemetry_client.register_instance(
            info_for("decode-0", Phase.DECODE, engine.url)
        )
        await wait_for_health(address, serving)


async def test_the_engine_client_does_not_queue_streams_behind_a_pool_limit() -> None:
    # 150 streams open at once. A pool capped at 100 connections (aiohttp's default) held 50
    # of them back until others ended, and that wait counted against the connect timeout:
    # they failed as timeouts although the engine had room. Here no stream ends by itself, so
    # a cap shows as fewer than 150 requests reaching the engine (however slow the host).
    payload = {"input_ids": [1, 2, 3], "sampling_params": {"max_new_tokens": 100_000}}
    async with (
        SimEngine(SimEngineSettings(mode="null", speedup=1.0, drain_timeout_s=0.0)) as engine,
        SglangHttpClient(connect_timeout_s=30.0) as client,
    ):

        async def stream() -> None:
            async for _ in client.generate_stream(engine.url, payload):
                pass

        streams = [asyncio.create_task(stream()) for _ in range(150)]
        try:
            deadline = time.monotonic() + 30.0
            while (reached := len(engine.core.requests())) < 150:
                ended = [task for task in streams if task.done()]
                assert not ended, f"a stream ended early: {ended[0].exception()!r}"
                assert time.monotonic() < deadline, f"only {reached} of 150 streams reached it"
                await asyncio.sleep(0.05)
        finally:
            await cancel_and_wait(streams)


async def test_health_probes_wait_for_sglangs_slow_health_endpoint() -> None:
    """Real SGLang's /health runs a one-token generation and answers no sooner than 1 s (0.5.x
    polls for it once a second): the real-engine tier saw a 1 s probe timeout eject every
    healthy server. The router's default timeout waits for it."""
    from aiohttp import web

    async def slow_health(_request: web.Request) -> web.Response:
        await asyncio.sleep(1.05)
        return web.Response()

    app = web.Application()
    app.router.add_get("/health", slow_health)
    runner = web.AppRunner(app)
    await runner.setup()
    port = free_port()
    await web.TCPSite(runner, "127.0.0.1", port).start()
    url = f"http://127.0.0.1:{port}"
    try:
        timeout_s = RouterSettings().health_check_timeout_s
        assert timeout_s >= 2.0
        async with SglangHttpClient(health_timeout_s=timeout_s) as prober:
            assert await prober.health(url)
        async with SglangHttpClient(health_timeout_s=1.0) as hasty:
            assert not await hasty.health(url)
    finally:
        await runner.cleanup()
