"""TelemetryService over real loopback gRPC, backed by a real redis-server."""

from __future__ import annotations

import asyncio
import dataclasses
import math
import socket
import uuid
from collections.abc import AsyncIterator
from typing import Any

import grpc
import grpc.aio
import pytest
import redis.asyncio as aioredis
from grpc_health.v1 import health_pb2, health_pb2_grpc
from security_helpers import SECURITY

from voltana.contract.state import ClusterSnapshot, InstanceState, Phase, SloTarget
from voltana.errors import ConfigError, InvalidArgumentError, NotFoundError, UnavailableError
from voltana.gpu import GpuSample
from voltana.rpc import create_channel
from voltana.rpc.names import TELEMETRY_SERVICE
from voltana.services.telemetry import (
    Completion,
    InstanceInfo,
    MemoryTelemetryStore,
    Metric,
    TelemetryClient,
    TelemetryService,
    TelemetrySettings,
    TelemetryStoreError,
)
from voltana.services.telemetry.records import PlacementEvent
from voltana.v1 import common_pb2, telemetry_pb2, telemetry_pb2_grpc

pytestmark = pytest.mark.integration

AGENT = "10.0.0.5:50061"


class FakeClock:
    def __init__(self, now_s: float = 1000.0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def key_prefix() -> str:
    return f"test:{uuid.uuid4().hex}:"


@pytest.fixture
async def service(
    redis_server: Any, clock: FakeClock, key_prefix: str
) -> AsyncIterator[TelemetryService]:
    settings = TelemetrySettings(
        redis_url=redis_server.url,
        redis_key_prefix=key_prefix,
        slo=SloTarget(ttft_ms=500.0, itl_ms=40.0),
        watch_default_interval_ms=20,
        watch_min_interval_ms=10,
        watch_idle_resend_s=30.0,
        registry_refresh_s=0.0,
        security=SECURITY,
    )
    async with TelemetryService(settings, clock=clock) as started:
        yield started


@pytest.fixture
async def client(service: TelemetryService) -> AsyncIterator[TelemetryClient]:
    async with TelemetryClient(service.address, security=SECURITY) as telemetry:
        yield telemetry


@pytest.fixture
async def redis_client(redis_server: Any) -> AsyncIterator[aioredis.Redis]:
    connection = aioredis.Redis.from_url(redis_server.url, decode_responses=True)
    yield connection
    await connection.aclose()


def prefill_info(instance_id: str = "p0", gpu_index: int = 0) -> InstanceInfo:
    return InstanceInfo(
        instance_id=instance_id,
        phase=Phase.PREFILL,
        gpu_key="a100-80g",
        engine_url=f"http://10.0.0.5:3000{gpu_index}",
        bootstrap_host="10.0.0.5",
        bootstrap_port=8998 + gpu_index,
        agent_address=AGENT,
        gpu_index=gpu_index,
        kv_tokens_capacity=300_000,
    )


def decode_info(instance_id: str = "d0", gpu_index: int = 1) -> InstanceInfo:
    return InstanceInfo(
        instance_id=instance_id,
        phase=Phase.DECODE,
        gpu_key="a100-80g",
        engine_url=f"http://10.0.0.5:3000{gpu_index}",
        agent_address=AGENT,
        gpu_index=gpu_index,
        max_running_requests=256,
    )


def load(instance_id: str, observed_at_s: float = 999.0, **fields: int) -> InstanceState:
    """A load report as an engine scraper builds it (phase/gpu/clock are not its business)."""
    return InstanceState(
        instance_id=instance_id,
        phase=Phase.DECODE,
        gpu_key="",
        sm_clock_mhz=0,
        observed_at_s=observed_at_s,
        **fields,
    )


async def register_pd(client: TelemetryClient) -> None:
    assert await client.register_instance(prefill_info()) is True
    assert await client.register_instance(decode_info()) is True


async def next_snapshot(
    stream: AsyncIterator[ClusterSnapshot], timeout_s: float = 2.0
) -> ClusterSnapshot:
    return await asyncio.wait_for(anext(stream), timeout_s)


async def test_samples_reach_the_snapshot_and_redis(
    client: TelemetryClient, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    await register_pd(client)
    result = await client.report_instance_samples(
        [
            load("p0", queue_len=2, queued_tokens=3000),
            load("d0", running_batch=17, kv_tokens_used=9000),
        ]
    )
    assert (result.accepted, result.rejected) == (2, 0)
    gpu_result = await client.report_gpu_samples(
        [GpuSample(0, 999.5, 1005, 180.0, 50.0), GpuSample(1, 999.5, 1410, 260.0, 70.0)],
        agent_address=AGENT,
    )
    assert (gpu_result.accepted, gpu_result.rejected) == (2, 0)

    snapshot, endpoints = await client.snapshot_with_endpoints()
    assert snapshot.now_s == 1000.0
    prefill, decode = snapshot.prefill["p0"], snapshot.decode["d0"]
    assert (prefill.queue_len, prefill.queued_tokens, prefill.sm_clock_mhz) == (2, 3000, 1005)
    assert (prefill.gpu_key, prefill.kv_tokens_capacity) == ("a100-80g", 300_000)
    assert (decode.running_batch, decode.kv_tokens_used, decode.power_w) == (17, 9000, 260.0)
    assert decode.max_running_requests == 256
    assert endpoints == {"p0": prefill_info(), "d0": decode_info()}

    # Redis holds every instance: registration, load report, GPU reading and series.
    assert await redis_client.smembers(f"{key_prefix}instances") == {"p0", "d0"}
    for instance_id in ("p0", "d0"):
        state_hash = await redis_client.hgetall(f"{key_prefix}state:{instance_id}")
        assert state_hash["instance_id"] == instance_id
        assert await redis_client.hget(f"{key_prefix}info:{instance_id}", "agent_address") == AGENT
        assert await redis_client.exists(f"{key_prefix}gpu:{instance_id}")
    assert await redis_client.hget(f"{key_prefix}state:d0", "running_batch") == "17"
    assert await redis_client.lrange(f"{key_prefix}series:p0:{Metric.SM_CLOCK_MHZ}", 0, -1) == [
        "999.5 1005.0"
    ]


async def test_snapshot_filters_by_phase_and_id(client: TelemetryClient) -> None:
    await register_pd(client)
    await client.register_instance(decode_info("d1", gpu_index=2))
    decode_only = await client.snapshot(phase=Phase.DECODE)
    assert (list(decode_only.prefill), list(decode_only.decode)) == ([], ["d0", "d1"])
    picked = await client.snapshot(instance_ids=["d1", "p0", "nobody"])
    assert (list(picked.prefill), list(picked.decode)) == (["p0"], ["d1"])


async def test_watch_pushes_a_snapshot_after_each_change(client: TelemetryClient) -> None:
    await register_pd(client)
    stream = client.watch(interval_ms=10)
    try:
        first = await next_snapshot(stream)
        assert first.decode["d0"].running_batch == 0

        await client.report_instance_samples([load("d0", running_batch=5)])
        second = await next_snapshot(stream)
        assert second.decode["d0"].running_batch == 5

        await client.report_gpu_samples(
            [GpuSample(1, 999.9, 1200, 200.0, 1.0)], agent_address=AGENT
        )
        third = await next_snapshot(stream)
        assert third.decode["d0"].sm_clock_mhz == 1200

        # Nothing changes: nothing is sent (the idle resend is 30 s away).
        with pytest.raises(TimeoutError):
            await next_snapshot(stream, timeout_s=0.3)
    finally:
        await stream.aclose()


async def test_watch_of_one_phase_ignores_changes_elsewhere(client: TelemetryClient) -> None:
    await register_pd(client)
    stream = client.watch(interval_ms=10, phase=Phase.PREFILL)
    try:
        assert list((await next_snapshot(stream)).prefill) == ["p0"]
        await client.report_instance_samples([load("d0", running_batch=5)])
        await asyncio.sleep(0.2)  # well past the interval: a snapshot could have gone out
        await client.report_instance_samples([load("p0", queue_len=4)])
        # The decode change did not produce a snapshot of its own.
        assert (await next_snapshot(stream)).prefill["p0"].queue_len == 4
    finally:
        await stream.aclose()


async def test_watch_rate_is_limited_to_the_interval(client: TelemetryClient) -> None:
    await register_pd(client)
    stream = client.watch(interval_ms=300)
    try:
        await next_snapshot(stream)
        loop = asyncio.get_running_loop()
        started_s = loop.time()
        for batch in range(1, 6):
            await client.report_instance_samples([load("d0", running_batch=batch)])
        latest = await next_snapshot(stream)
        assert loop.time() - started_s >= 0.25
        # Changes that came in while it waited are folded into one snapshot.
        assert latest.decode["d0"].running_batch == 5
    finally:
        await stream.aclose()


async def test_stopping_the_service_ends_watch_streams(
    redis_server: Any, key_prefix: str, clock: FakeClock
) -> None:
    settings = TelemetrySettings(
        redis_url=redis_server.url,
        redis_key_prefix=key_prefix,
        shutdown_grace_s=10.0,
        security=SECURITY,
    )
    service = TelemetryService(settings, clock=clock)
    await service.start()
    async with TelemetryClient(service.address, security=SECURITY) as client:
        stream = client.watch()
        await next_snapshot(stream)
        loop = asyncio.get_running_loop()
        started_s = loop.time()
        await service.stop()
        with pytest.raises((StopAsyncIteration, UnavailableError)):
            await next_snapshot(stream)
        assert loop.time() - started_s < 5.0


async def test_an_impossible_gauge_rejects_its_sample_and_the_stream_goes_on(
    client: TelemetryClient,
) -> None:
    await register_pd(client)
    result = await client.report_instance_samples(
        [
            load("p0", queue_len=3),
            load("p0", observed_at_s=999.5, queue_len=-1),
            load("d0", observed_at_s=999.6, running_batch=4),
        ]
    )
    assert (result.accepted, result.rejected, result.dropped_fields) == (2, 1, 0)
    assert "queue_len" in result.first_rejection_reason
    snapshot = await client.snapshot()
    assert snapshot.prefill["p0"].queue_len == 3
    assert snapshot.decode["d0"].running_batch == 4


async def test_an_impossible_latency_is_dropped_and_its_sample_kept(
    client: TelemetryClient, service: TelemetryService
) -> None:
    """A negative recent ITL (what simulated decode engines once reported under load) costs
    that field only: the load it came with is stored, and later samples too."""
    await register_pd(client)
    bad = dataclasses.replace(
        load("d0", running_batch=7), recent_itl_ms=-214.0, recent_ttft_ms=120.0
    )
    nan = dataclasses.replace(
        load("d0", observed_at_s=999.5, running_batch=8), recent_itl_ms=math.nan
    )
    good = dataclasses.replace(load("d0", observed_at_s=999.7, running_batch=9), recent_itl_ms=21.0)
    result = await client.report_instance_samples([bad])
    assert (result.accepted, result.rejected, result.dropped_fields) == (1, 0, 1)
    assert "recent_itl_ms" in result.first_rejection_reason
    state = (await client.snapshot()).decode["d0"]
    assert (state.running_batch, state.recent_itl_ms, state.recent_ttft_ms) == (7, None, 120.0)
    result = await client.report_instance_samples([nan, good])
    assert (result.accepted, result.rejected, result.dropped_fields) == (2, 0, 1)
    state = (await client.snapshot()).decode["d0"]
    assert (state.running_batch, state.recent_itl_ms) == (9, 21.0)
    points = await service.store.series("d0", Metric.RECENT_ITL_MS)
    assert [p.value for p in points] == [21.0]  # nothing impossible reached the series


async def test_a_malformed_id_still_ends_the_stream_and_keeps_earlier_samples(
    client: TelemetryClient,
) -> None:
    await register_pd(client)
    with pytest.raises(InvalidArgumentError, match=r"sample 2 .*instance_id.*1 earlier"):
        await client.report_instance_samples(
            [load("p0", queue_len=3), load(" p0", observed_at_s=999.5)]
        )
    assert (await client.snapshot()).prefill["p0"].queue_len == 3


async def test_invalid_input_is_invalid_argument_on_the_wire(service: TelemetryService) -> None:
    async with create_channel(service.address, security=SECURITY) as channel:
        stub = telemetry_pb2_grpc.TelemetryServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.RegisterInstance(
                telemetry_pb2.RegisterInstanceRequest(instance_id="x", gpu_key="a100-80g")
            )
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
        assert "phase" in (raised.value.details() or "")

        await stub.RegisterInstance(
            telemetry_pb2.RegisterInstanceRequest(
                instance_id="d0", phase=common_pb2.PHASE_DECODE, gpu_key="a100-80g"
            )
        )
        # An impossible GPU reading is refused alone; the readings after it are stored.
        response = await stub.ReportGpuSamples(
            iter(
                [
                    common_pb2.GpuSample(instance_id="d0", power_w=-1.0, timestamp_s=1.0),
                    common_pb2.GpuSample(instance_id="d0", power_w=90.0, timestamp_s=2.0),
                ]
            )
        )
        assert (response.accepted, response.rejected) == (1, 1)
        assert "power_w" in response.first_rejection_reason

        with pytest.raises(grpc.aio.AioRpcError) as raised:
            await stub.GetAggregates(telemetry_pb2.GetAggregatesRequest(window_s=-5.0))
        assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT


async def test_unusable_samples_are_counted_not_fatal(client: TelemetryClient) -> None:
    await register_pd(client)
    result = await client.report_instance_samples(
        [
            load("ghost", queue_len=1),
            load("d0", observed_at_s=999.0, running_batch=2),
            load("d0", observed_at_s=998.0, running_batch=9),  # late: older than the last
            load("d0", observed_at_s=999.2, running_batch=3),
        ]
    )
    assert (result.accepted, result.rejected) == (2, 2)
    assert result.first_rejection_reason == "instance 'ghost' is not registered"
    assert (await client.snapshot()).decode["d0"].running_batch == 3

    gpu_result = await client.report_gpu_samples(
        [GpuSample(7, 999.0, 1410, 1.0, 1.0), GpuSample(0, 999.0, 1005, 90.0, 1.0)],
        agent_address=AGENT,
    )
    assert (gpu_result.accepted, gpu_result.rejected) == (1, 1)
    assert "GPU 7" in gpu_result.first_rejection_reason


async def test_gpu_samples_can_name_their_instance(client: TelemetryClient) -> None:
    await register_pd(client)
    result = await client.report_gpu_samples(
        [GpuSample(3, 999.0, 1305, 150.0, 1.0)], instance_ids_by_gpu={3: "d0"}
    )
    assert result.accepted == 1
    assert (await client.snapshot()).decode["d0"].sm_clock_mhz == 1305


async def test_completions_feed_aggregates_and_arrival_rates(
    client: TelemetryClient, clock: FakeClock
) -> None:
    await register_pd(client)
    for index, (ttft_ms, itl_ms) in enumerate(((100.0, 20.0), (700.0, 30.0), (200.0, 45.0))):
        await client.report_completion(
            Completion(
                request_id=f"r{index}",
                prefill_id="p0",
                decode_id="d0",
                input_tokens=100,
                output_tokens=10,
                ttft_ms=ttft_ms,
                mean_itl_ms=itl_ms,
                ok=True,
                arrival_s=995.0,
                finished_at_s=998.0,
            )
        )
    await client.report_gpu_samples(
        [GpuSample(1, 950.0, 1410, 200.0, 100.0), GpuSample(1, 999.0, 1410, 200.0, 600.0)],
        agent_address=AGENT,
    )

    report = await client.window_report(60.0)
    assert (report.now_s, report.window_s) == (1000.0, 60.0)
    assert list(report.instances) == ["d0", "p0"]
    d0 = report.instances["d0"]
    assert (d0.finished, d0.failed, d0.output_tokens) == (3, 0, 30)
    assert d0.ttft_p50_ms == pytest.approx(200.0)
    # Judged by the service's SLO (500 ms TTFT, 40 ms ITL): r0 meets both.
    assert d0.ttft_attainment == pytest.approx(2 / 3)
    assert d0.itl_attainment == pytest.approx(2 / 3)
    assert d0.slo_attainment == pytest.approx(1 / 3)
    assert d0.energy_j == pytest.approx(500.0)
    assert d0.mean_sm_clock_mhz == pytest.approx(1410.0)
    assert report.cluster.instance_id is None
    assert report.cluster.finished == 3
    assert report.instances["p0"].energy_j == 0.0

    only_p0 = await client.window_report(60.0, instance_ids=["p0"])
    assert list(only_p0.instances) == ["p0"]


async def test_arrival_rates_are_counted_at_placement(client: TelemetryClient) -> None:
    """The observation contract: requests and prompt tokens per second placed on an instance
    over the window (5 s), from the router's placements - not from completions."""
    await register_pd(client)
    await client.report_instance_samples([load("d0", running_batch=3), load("p0")])
    placed = [
        PlacementEvent(f"r{n}", "p0", "d0", input_tokens=100 * (n + 1), placed_at_s=997.0 + n)
        for n in range(3)
    ]
    assert await client.report_placements(placed) == 3
    snapshot = await client.snapshot()
    for state in (snapshot.prefill["p0"], snapshot.decode["d0"]):
        assert state.arrival_rate_rps == pytest.approx(3 / 5.0)
        assert state.arrival_tokens_per_s == pytest.approx(600 / 5.0)
    # Placements older than the window no longer count.
    assert await client.report_placements([PlacementEvent("old", "p0", "d0", 50, 990.0)]) == 0
    assert (await client.snapshot()).prefill["p0"].arrival_rate_rps == pytest.approx(3 / 5.0)


async def test_placements_need_the_control_token_and_sane_times(
    client: TelemetryClient,
) -> None:
    await register_pd(client)
    with pytest.raises(InvalidArgumentError, match="ahead of telemetry's clock"):
        await client.report_placements([PlacementEvent("r", "p0", "d0", 10, 5000.0)])


async def test_unregister_removes_the_instance(
    client: TelemetryClient, redis_client: aioredis.Redis, key_prefix: str
) -> None:
    await register_pd(client)
    await client.unregister_instance("d0")
    assert list((await client.snapshot()).decode) == []
    assert not await redis_client.exists(f"{key_prefix}info:d0")
    with pytest.raises(NotFoundError, match="'d0' is not registered"):
        await client.unregister_instance("d0")
    result = await client.report_instance_samples([load("d0", running_batch=1)])
    assert result.rejected == 1


async def test_health_reports_the_telemetry_service_serving(service: TelemetryService) -> None:
    async with create_channel(service.address, security=SECURITY) as channel:
        reply = await health_pb2_grpc.HealthStub(channel).Check(
            health_pb2.HealthCheckRequest(service=TELEMETRY_SERVICE)
        )
    assert reply.status == health_pb2.HealthCheckResponse.SERVING


async def test_memory_store_is_the_default(clock: FakeClock) -> None:
    async with (
        TelemetryService(TelemetrySettings(security=SECURITY), clock=clock) as service,
        TelemetryClient(service.address, security=SECURITY) as client,
    ):
        await register_pd(client)
        assert list((await client.snapshot()).prefill) == ["p0"]


async def test_unreachable_redis_fails_at_start(clock: FakeClock) -> None:
    # A port nothing listens on: bind one, close it, use it.
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    service = TelemetryService(
        TelemetrySettings(redis_url=f"redis://127.0.0.1:{port}/0", security=SECURITY), clock=clock
    )
    with pytest.raises(TelemetryStoreError, match="redis failed"):
        await service.start()
    await service.stop()


def test_settings_are_checked() -> None:
    with pytest.raises(ConfigError, match="series_cap"):
        TelemetrySettings(series_cap=0, security=SECURITY)
    with pytest.raises(ConfigError, match="watch_default_interval_ms"):
        TelemetrySettings(watch_default_interval_ms=5, watch_min_interval_ms=10, security=SECURITY)
    with pytest.raises(ConfigError, match="window_s"):
        TelemetrySettings(window_s=float("inf"), security=SECURITY)


class CountingStore(MemoryTelemetryStore):
    """The memory store, counting how often snapshots are read from it."""

    def __init__(self, clock: FakeClock) -> None:
        super().__init__(clock=clock)
        self.state_reads = 0

    async def latest_states(self) -> dict[str, InstanceState]:
        self.state_reads += 1
        return await super().latest_states()


async def test_watchers_share_one_store_read_per_change(clock: FakeClock) -> None:
    store = CountingStore(clock)
    settings = TelemetrySettings(
        watch_min_interval_ms=10, watch_idle_resend_s=30.0, security=SECURITY
    )
    async with (
        TelemetryService(settings, clock=clock, store=store) as service,
        TelemetryClient(service.address, security=SECURITY) as client,
    ):
        await register_pd(client)
        streams = [client.watch(interval_ms=10) for _ in range(5)]
        try:
            for stream in streams:
                await next_snapshot(stream)
            reads_before = store.state_reads
            await client.report_instance_samples([load("d0", running_batch=8)])
            for stream in streams:
                assert (await next_snapshot(stream)).decode["d0"].running_batch == 8
            assert store.state_reads - reads_before == 1
        finally:
            for stream in streams:
                await stream.aclose()


async def test_quiet_cluster_is_resent_so_time_moves(clock: FakeClock) -> None:
    settings = TelemetrySettings(
        watch_min_interval_ms=10, watch_idle_resend_s=0.2, security=SECURITY
    )
    async with (
        TelemetryService(settings, clock=clock) as service,
        TelemetryClient(service.address, security=SECURITY) as client,
    ):
        await register_pd(client)
        stream = client.watch(interval_ms=10)
        try:
            first = await next_snapshot(stream)
            clock.now_s += 7.0
            second = await next_snapshot(stream, timeout_s=2.0)
            assert second.now_s == first.now_s + 7.0
            assert second.decode == first.decode
        finally:
            await stream.aclose()


async def test_a_batch_of_completions_keeps_the_valid_ones_and_names_the_refused(
    client: TelemetryClient,
) -> None:
    await register_pd(client)

    def completion(index: int, finished_at_s: float) -> Completion:
        return Completion(
            request_id=f"b{index}",
            prefill_id="p0",
            decode_id="d0",
            input_tokens=100,
            output_tokens=10,
            ttft_ms=100.0,
            mean_itl_ms=20.0,
            ok=True,
            arrival_s=995.0,
            finished_at_s=finished_at_s,
        )

    # The middle one finishes in the far future: refused alone.
    batch = [completion(0, 998.0), completion(1, 1e12), completion(2, 999.0)]
    refused = await client.report_completions(batch)
    assert list(refused) == [1] and "finished_at_s" in refused[1]
    # Sent again (a reply lost after the write), the kept ones still count once.
    assert await client.report_completions([batch[0], batch[2]]) == {}
    report = await client.window_report(60.0)
    assert report.instances["d0"].finished == 2


async def test_the_cluster_slo_lives_in_the_store_and_travels_with_snapshots(
    service: TelemetryService,
    client: TelemetryClient,
    redis_server: Any,
    redis_client: aioredis.Redis,
    clock: FakeClock,
    key_prefix: str,
) -> None:
    """Seeded from telemetry's configuration, changed by SetClusterSlo, carried by every
    snapshot and watch, the default of aggregates, kept across telemetry restarts."""
    assert (await client.snapshot()).cluster_slo == SloTarget(ttft_ms=500.0, itl_ms=40.0)
    stream = client.watch(interval_ms=20)
    try:
        await next_snapshot(stream)
        set_at_s = await client.set_cluster_slo(SloTarget(ttft_ms=300.0, itl_ms=30.0))
        assert set_at_s == clock()
        watched = await next_snapshot(stream)
        assert watched.cluster_slo == SloTarget(ttft_ms=300.0, itl_ms=30.0)
    finally:
        await stream.aclose()
    await register_pd(client)
    await client.report_completion(
        Completion(
            request_id="r0",
            prefill_id="p0",
            decode_id="d0",
            input_tokens=100,
            output_tokens=10,
            ttft_ms=400.0,  # meets the configured 500 ms, not the cluster's 300 ms
            mean_itl_ms=20.0,
            ok=True,
            arrival_s=995.0,
            finished_at_s=998.0,
        )
    )
    assert (await client.window_report(60.0)).instances["d0"].ttft_attainment == 0.0

    # Another telemetry process on the same store (or this one restarted) serves the same SLO.
    settings = dataclasses.replace(service.settings, listen_address="127.0.0.1:0")
    async with TelemetryService(settings, clock=clock) as other:
        assert other.cluster_slo == SloTarget(ttft_ms=300.0, itl_ms=30.0)
        # Garbage where the SLO is kept: written back by the next upkeep round.
        await redis_client.hset(f"{key_prefix}cluster_slo", "itl_ms", "-3")
        assert other.upkeep is not None
        await other.upkeep.check_once()
        assert await redis_client.hget(f"{key_prefix}cluster_slo", "itl_ms") == "30.0"
        assert other.cluster_slo == SloTarget(ttft_ms=300.0, itl_ms=30.0)

    channel = create_channel(service.address, security=SECURITY)
    try:
        stub = telemetry_pb2_grpc.TelemetryServiceStub(channel)
        for bad in (
            telemetry_pb2.SetClusterSloRequest(),
            telemetry_pb2.SetClusterSloRequest(slo=common_pb2.SloTarget(ttft_ms=0.0, itl_ms=5.0)),
            telemetry_pb2.SetClusterSloRequest(
                slo=common_pb2.SloTarget(ttft_ms=100.0, itl_ms=5.0, ttft_ms_per_1k_tokens=-1.0)
            ),
        ):
            with pytest.raises(grpc.aio.AioRpcError) as raised:
                await stub.SetClusterSlo(bad)
            assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    finally:
        await channel.close()
