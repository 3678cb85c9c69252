"""One contract, two stores: the in-memory store and the Redis store behave the same."""

from __future__ import annotations

import asyncio
import dataclasses
import uuid
from collections.abc import AsyncIterator, Callable
from typing import Any

import pytest

from voltana.contract.state import InstanceState, Phase, SloTarget
from voltana.services.telemetry import (
    Completion,
    InstanceInfo,
    InvalidTelemetryError,
    MemoryTelemetryStore,
    Metric,
    RedisTelemetryStore,
    SeriesPoint,
    TelemetryStore,
    snapshot_of,
)

pytestmark = pytest.mark.integration


class FakeClock:
    """A clock the test moves by hand."""

    def __init__(self, now_s: float = 1000.0) -> None:
        self.now_s = now_s

    def __call__(self) -> float:
        return self.now_s


StoreFactory = Callable[..., TelemetryStore]


@pytest.fixture(params=["memory", "redis"])
async def make_store(
    request: pytest.FixtureRequest, clock: FakeClock
) -> AsyncIterator[StoreFactory]:
    """Builds stores of one kind; the Redis ones get a fresh key prefix on the shared server."""
    stores: list[TelemetryStore] = []

    def factory(**options: int) -> TelemetryStore:
        store: TelemetryStore
        if request.param == "memory":
            store = MemoryTelemetryStore(clock=clock, **options)
        else:
            server = request.getfixturevalue("redis_server")
            prefix = f"test:{uuid.uuid4().hex}:"
            store = RedisTelemetryStore.from_url(
                server.url, clock=clock, key_prefix=prefix, **options
            )
        stores.append(store)
        return store

    yield factory
    for store in stores:
        await store.close()


@pytest.fixture
def clock() -> FakeClock:
    return FakeClock()


@pytest.fixture
def store(make_store: StoreFactory) -> TelemetryStore:
    return make_store()


def decode_state(instance_id: str = "d0", **fields: Any) -> InstanceState:
    values: dict[str, Any] = {
        "instance_id": instance_id,
        "phase": Phase.DECODE,
        "gpu_key": "h100-sxm",
        "sm_clock_mhz": 1980,
        "observed_at_s": 999.0,
    }
    values.update(fields)
    return InstanceState(**values)


def completion(
    request_id: str,
    *,
    ttft_ms: float | None = 100.0,
    mean_itl_ms: float | None = 20.0,
    ok: bool = True,
    finished_at_s: float = 995.0,
    prefill_id: str = "p0",
    decode_id: str = "d0",
) -> Completion:
    return Completion(
        request_id=request_id,
        prefill_id=prefill_id,
        decode_id=decode_id,
        input_tokens=512,
        output_tokens=64,
        ttft_ms=ttft_ms,
        mean_itl_ms=mean_itl_ms,
        ok=ok,
        finished_at_s=finished_at_s,
        reason="" if ok else "engine error",
    )


async def test_latest_state_round_trips_every_field(store: TelemetryStore) -> None:
    state = InstanceState(
        instance_id="p0",
        phase=Phase.PREFILL,
        gpu_key="a100-80g",
        sm_clock_mhz=1005,
        queue_len=3,
        queued_tokens=4096,
        oldest_wait_ms=12.5,
        running_prefill_tokens=2048,
        running_batch=1,
        kv_tokens_used=7000,
        kv_tokens_capacity=200_000,
        max_running_requests=48,
        recent_ttft_ms=310.25,
        recent_itl_ms=None,
        arrival_rate_rps=4.75,
        power_w=251.5,
        energy_j=12345.125,
        arrival_tokens_per_s=123.5,
        inflight_requests=2,
        inflight_tokens=777,
        observed_at_s=998.5,
        last_activity_s=997.25,
    )
    await store.put_instance_state(state)
    assert await store.latest_states() == {"p0": state}


async def test_unstamped_state_takes_the_store_clock(
    store: TelemetryStore, clock: FakeClock
) -> None:
    await store.put_instance_state(decode_state(observed_at_s=0.0))
    stored = (await store.latest_states())["d0"]
    assert stored.observed_at_s == clock.now_s
    assert stored.last_activity_s == clock.now_s


async def test_newer_state_replaces_older(store: TelemetryStore) -> None:
    await store.put_instance_state(decode_state(running_batch=5))
    await store.put_instance_state(decode_state(running_batch=7, recent_itl_ms=31.0))
    stored = (await store.latest_states())["d0"]
    assert stored.running_batch == 7
    assert stored.recent_itl_ms == 31.0


async def test_registered_instance_shows_before_any_report(store: TelemetryStore) -> None:
    info = InstanceInfo(
        instance_id="p1",
        phase=Phase.PREFILL,
        gpu_key="h100-sxm",
        engine_url="http://10.0.0.5:30000",
        bootstrap_host="10.0.0.5",
        bootstrap_port=8998,
        agent_address="10.0.0.5:50061",
        gpu_index=3,
    )
    await store.register_instance(info)
    assert await store.instance_infos() == {"p1": info}
    state = (await store.latest_states())["p1"]
    assert (state.phase, state.gpu_key, state.sm_clock_mhz) == (Phase.PREFILL, "h100-sxm", 0)
    # Never heard from the engine: "no metrics" rules must see no activity.
    assert state.last_activity_s == 0.0


async def test_gpu_sample_overrides_clock_power_energy(store: TelemetryStore) -> None:
    await store.put_instance_state(decode_state(sm_clock_mhz=1980, power_w=1.0, energy_j=2.0))
    await store.put_gpu_sample("d0", 1000.5, 1200, 310.0, 5000.0)
    # A later load report without NVML readings must not wipe the GPU's readings.
    await store.put_instance_state(decode_state(running_batch=9, observed_at_s=999.5))
    stored = (await store.latest_states())["d0"]
    assert (stored.sm_clock_mhz, stored.power_w, stored.energy_j) == (1200, 310.0, 5000.0)
    assert stored.running_batch == 9
    # The load fields are as of the report: the later GPU sample does not make them fresh.
    assert stored.observed_at_s == 999.5
    # GPU samples are not engine activity.
    assert stored.last_activity_s == 999.5


async def test_gpu_sample_of_unknown_instance_waits_for_its_phase(store: TelemetryStore) -> None:
    await store.put_gpu_sample("d9", 1000.0, 1410, 90.0, 10.0)
    assert await store.latest_states() == {}
    await store.register_instance(InstanceInfo("d9", Phase.DECODE, "a100-80g"))
    stored = (await store.latest_states())["d9"]
    assert (stored.sm_clock_mhz, stored.power_w) == (1410, 90.0)


async def test_snapshot_splits_phases_in_id_order(store: TelemetryStore, clock: FakeClock) -> None:
    for instance_id in ("d1", "p1", "d0", "p0"):
        phase = Phase.PREFILL if instance_id.startswith("p") else Phase.DECODE
        await store.put_instance_state(decode_state(instance_id, phase=phase))
    snapshot = await snapshot_of(store)
    assert snapshot.now_s == clock.now_s
    assert list(snapshot.prefill) == ["p0", "p1"]
    assert list(snapshot.decode) == ["d0", "d1"]
    assert list(await store.latest_states()) == ["d0", "d1", "p0", "p1"]


async def test_series_keeps_arrival_order_and_filters_by_time(store: TelemetryStore) -> None:
    for ts_s, batch in ((10.0, 1), (11.0, 2), (12.0, 3)):
        await store.put_instance_state(decode_state(running_batch=batch, observed_at_s=ts_s))
    assert await store.series("d0", Metric.RUNNING_BATCH) == [
        SeriesPoint(10.0, 1.0),
        SeriesPoint(11.0, 2.0),
        SeriesPoint(12.0, 3.0),
    ]
    assert await store.series("d0", "running_batch", since_s=11.0) == [
        SeriesPoint(11.0, 2.0),
        SeriesPoint(12.0, 3.0),
    ]
    # Latencies that were not measured leave no point.
    assert await store.series("d0", Metric.RECENT_TTFT_MS) == []
    assert await store.series("nobody", Metric.RUNNING_BATCH) == []


async def test_gpu_samples_feed_gpu_series(store: TelemetryStore) -> None:
    await store.put_gpu_sample("d0", 5.0, 1005, 200.0, 100.0)
    await store.put_gpu_sample("d0", 6.0, 1410, 300.0, 400.0)
    assert await store.series("d0", Metric.SM_CLOCK_MHZ) == [
        SeriesPoint(5.0, 1005.0),
        SeriesPoint(6.0, 1410.0),
    ]
    assert await store.series("d0", Metric.ENERGY_J, since_s=5.5) == [SeriesPoint(6.0, 400.0)]


async def test_series_is_capped_to_the_newest_points(make_store: StoreFactory) -> None:
    store = make_store(series_cap=3)
    for ts_s in range(10):
        await store.put_gpu_sample("d0", float(ts_s), 1000 + ts_s, 100.0, float(ts_s))
    points = await store.series("d0", Metric.SM_CLOCK_MHZ)
    assert [p.ts_s for p in points] == [7.0, 8.0, 9.0]


async def test_unknown_metric_is_rejected(store: TelemetryStore) -> None:
    with pytest.raises(InvalidTelemetryError, match="unknown metric 'watts'"):
        await store.series("d0", "watts")


@pytest.mark.parametrize(
    ("fields", "message"),
    [
        ({"queue_len": -1}, "queue_len"),
        ({"power_w": float("nan")}, "power_w"),
        ({"recent_itl_ms": -3.0}, "recent_itl_ms"),
        ({"instance_id": ""}, "instance_id"),
    ],
)
async def test_invalid_state_is_rejected_and_not_stored(
    store: TelemetryStore, fields: dict[str, Any], message: str
) -> None:
    await store.put_instance_state(decode_state(running_batch=4))
    with pytest.raises(InvalidTelemetryError, match=message):
        await store.put_instance_state(decode_state(running_batch=99, **fields))
    assert (await store.latest_states())["d0"].running_batch == 4


async def test_invalid_gpu_sample_and_completion_are_rejected(store: TelemetryStore) -> None:
    with pytest.raises(InvalidTelemetryError, match="energy_j"):
        await store.put_gpu_sample("d0", 1.0, 1410, 100.0, -5.0)
    with pytest.raises(InvalidTelemetryError, match="output_tokens"):
        await store.record_completion(dataclasses.replace(completion("r1"), output_tokens=-1))
    with pytest.raises(InvalidTelemetryError, match="window_s"):
        await store.aggregates(None, 0.0)
    assert await store.series("d0", Metric.ENERGY_J) == []
    assert (await store.aggregates(None, 60.0)).finished == 0


async def test_aggregates_latency_percentiles_and_attainment(store: TelemetryStore) -> None:
    slo = SloTarget(ttft_ms=500.0, itl_ms=40.0)
    # Inside the 60 s window ending at 1000: four ok requests and one failure.
    for index, (ttft_ms, itl_ms) in enumerate(
        ((100.0, 20.0), (200.0, 30.0), (300.0, 50.0), (600.0, 35.0))
    ):
        await store.record_completion(completion(f"r{index}", ttft_ms=ttft_ms, mean_itl_ms=itl_ms))
    await store.record_completion(completion("failed", ttft_ms=None, mean_itl_ms=None, ok=False))
    # Outside the window: too old, and exactly on its open lower edge.
    await store.record_completion(completion("old", ttft_ms=5000.0, finished_at_s=900.0))
    await store.record_completion(completion("edge", ttft_ms=5000.0, finished_at_s=940.0))

    result = await store.aggregates(None, 60.0, slo)
    assert (result.finished, result.failed) == (5, 1)
    assert result.request_rate_rps == pytest.approx(5 / 60)
    assert result.ttft_p50_ms == pytest.approx(250.0)
    assert result.ttft_p90_ms == pytest.approx(510.0)
    assert result.itl_p50_ms == pytest.approx(32.5)
    assert result.itl_p90_ms == pytest.approx(45.5)
    assert result.ttft_attainment == pytest.approx(3 / 5)
    assert result.itl_attainment == pytest.approx(3 / 5)
    # r0 and r1 meet both; r2 misses ITL, r3 misses TTFT, the failure misses both.
    assert result.slo_attainment == pytest.approx(2 / 5)
    assert (result.window_s, result.now_s) == (60.0, 1000.0)


async def test_aggregates_of_one_instance_count_its_requests(store: TelemetryStore) -> None:
    await store.record_completion(completion("a", decode_id="d0"))
    await store.record_completion(completion("b", decode_id="d1", mean_itl_ms=90.0))
    await store.record_completion(completion("c", prefill_id="p1", decode_id="d1"))
    d1 = await store.aggregates("d1", 60.0)
    assert d1.instance_id == "d1"
    assert d1.finished == 2
    assert d1.itl_attainment == pytest.approx(0.5)
    assert (await store.aggregates("p0", 60.0)).finished == 2
    assert (await store.aggregates("p1", 60.0)).finished == 1


async def test_empty_window_has_no_attainment(store: TelemetryStore) -> None:
    result = await store.aggregates("d0", 30.0)
    assert result.finished == 0
    assert result.ttft_p50_ms is None
    assert result.slo_attainment is None
    assert result.energy_j == 0.0


async def test_one_token_answers_cannot_miss_itl(store: TelemetryStore) -> None:
    await store.record_completion(completion("short", mean_itl_ms=None))
    result = await store.aggregates(None, 60.0)
    assert result.itl_attainment == 1.0
    assert result.itl_p50_ms is None


async def test_energy_in_window_comes_from_counter_deltas(store: TelemetryStore) -> None:
    # Window (940, 1000]. The reading at 930 is the baseline; 1010 is in the future.
    for ts_s, energy_j in ((900.0, 0.0), (930.0, 1000.0), (950.0, 3000.0), (990.0, 7000.0)):
        await store.put_gpu_sample("d0", ts_s, 1410, 300.0, energy_j)
    await store.put_gpu_sample("d0", 1010.0, 1410, 300.0, 99_000.0)
    # Second GPU: no reading before the window, so its first in-window reading is the base;
    # its counter restarts at 990, which must not subtract energy.
    for ts_s, energy_j in ((960.0, 500.0), (970.0, 800.0), (990.0, 100.0), (1000.0, 400.0)):
        await store.put_gpu_sample("p0", ts_s, 1410, 300.0, energy_j)

    d0 = await store.aggregates("d0", 60.0)
    assert d0.energy_j == pytest.approx(6000.0)
    assert d0.mean_power_w == pytest.approx(100.0)
    assert (await store.aggregates("p0", 60.0)).energy_j == pytest.approx(600.0)
    assert (await store.aggregates(None, 60.0)).energy_j == pytest.approx(6600.0)


async def test_completions_are_capped(make_store: StoreFactory) -> None:
    store = make_store(completions_cap=3)
    for index in range(6):
        await store.record_completion(completion(f"r{index}", finished_at_s=990.0 + index))
    assert (await store.aggregates(None, 60.0)).finished == 3


async def test_state_writes_move_the_change_version(store: TelemetryStore) -> None:
    notifier = store.changes
    seen = notifier.version
    waiter = asyncio.create_task(notifier.wait_for_change(seen, timeout_s=5.0))
    await asyncio.sleep(0)
    assert not waiter.done()
    await store.put_instance_state(decode_state())
    assert await asyncio.wait_for(waiter, 1.0) > seen

    seen = notifier.version
    await store.record_completion(completion("r1"))
    assert notifier.version == seen  # completions do not change snapshots
    await store.put_gpu_sample("d0", 1.0, 1410, 100.0, 1.0)
    await store.register_instance(InstanceInfo("d0", Phase.DECODE, "h100-sxm"))
    assert notifier.version == seen + 2
    assert await notifier.wait_for_change(notifier.version, timeout_s=0.01) == notifier.version


async def test_rejected_write_does_not_move_the_change_version(store: TelemetryStore) -> None:
    seen = store.changes.version
    with pytest.raises(InvalidTelemetryError):
        await store.put_instance_state(decode_state(queue_len=-1))
    assert store.changes.version == seen


async def test_register_reports_whether_the_instance_is_new(store: TelemetryStore) -> None:
    info = InstanceInfo("p0", Phase.PREFILL, "a100-80g", engine_url="http://a:1")
    assert await store.register_instance(info) is True
    moved = dataclasses.replace(info, engine_url="http://b:2")
    assert await store.register_instance(moved) is False
    assert (await store.instance_infos())["p0"].engine_url == "http://b:2"


async def test_registration_fills_engine_limits_the_report_leaves_unknown(
    store: TelemetryStore,
) -> None:
    await store.register_instance(
        InstanceInfo(
            "d0", Phase.DECODE, "h100-sxm", kv_tokens_capacity=500_000, max_running_requests=256
        )
    )
    await store.put_instance_state(decode_state(gpu_key="", max_running_requests=128))
    stored = (await store.latest_states())["d0"]
    assert (stored.gpu_key, stored.kv_tokens_capacity) == ("h100-sxm", 500_000)
    assert stored.max_running_requests == 128  # the engine's own figure wins


async def test_unregister_forgets_state_and_series_but_not_completions(
    store: TelemetryStore,
) -> None:
    await store.register_instance(InstanceInfo("d0", Phase.DECODE, "h100-sxm"))
    await store.put_instance_state(decode_state())
    await store.put_gpu_sample("d0", 990.0, 1410, 100.0, 1.0)
    await store.record_completion(completion("r1"))
    seen = store.changes.version

    assert await store.unregister_instance("d0") is True
    assert store.changes.version > seen
    assert await store.latest_states() == {}
    assert await store.instance_infos() == {}
    assert await store.series("d0", Metric.POWER_W) == []
    assert (await store.aggregates(None, 60.0)).finished == 1
    assert await store.unregister_instance("d0") is False


async def test_requests_are_judged_by_their_own_slo(store: TelemetryStore) -> None:
    strict = SloTarget(ttft_ms=50.0, itl_ms=10.0)
    await store.record_completion(dataclasses.replace(completion("strict"), slo=strict))
    await store.record_completion(completion("default"))
    result = await store.aggregates(None, 60.0, SloTarget(ttft_ms=800.0, itl_ms=50.0))
    assert result.ttft_attainment == pytest.approx(0.5)
    assert result.slo_attainment == pytest.approx(0.5)


async def test_window_report_covers_each_selected_instance_and_the_selection(
    store: TelemetryStore,
) -> None:
    await store.put_gpu_sample("d0", 950.0, 1000, 100.0, 0.0)
    await store.put_gpu_sample("d0", 990.0, 1400, 100.0, 40.0)
    await store.put_gpu_sample("d1", 990.0, 1200, 100.0, 7.0)
    await store.put_gpu_sample("d1", 1000.0, 1200, 100.0, 10.0)
    await store.record_completion(completion("a", decode_id="d0"))
    await store.record_completion(completion("b", decode_id="d1"))
    await store.record_completion(dataclasses.replace(completion("c", decode_id="d2")))

    report = await store.window_report(["d0", "d1"], 60.0)
    assert list(report.instances) == ["d0", "d1"]
    assert report.instances["d0"].mean_sm_clock_mhz == pytest.approx(1200.0)
    assert report.instances["d0"].energy_j == pytest.approx(40.0)
    assert report.instances["d1"].finished == 1
    assert report.cluster.instance_id is None
    assert report.cluster.finished == 2  # "c" ran on d2, outside the selection
    assert report.cluster.output_tokens == 128
    assert report.cluster.energy_j == pytest.approx(43.0)

    everything = await store.window_report(None, 60.0)
    assert list(everything.instances) == ["d0", "d1"]
    assert everything.cluster.finished == 3
    assert (await store.aggregates("d2", 60.0)).mean_sm_clock_mhz is None


async def test_untimed_gpu_reading_takes_the_store_clock(
    store: TelemetryStore, clock: FakeClock
) -> None:
    await store.put_gpu_sample("d0", 0.0, 1410, 100.0, 5.0)
    assert await store.series("d0", Metric.POWER_W) == [SeriesPoint(clock.now_s, 100.0)]
