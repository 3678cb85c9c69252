"""RouterService end to end on loopback: real TelemetryService (memory store), real simulated
SGLang engines (prefill + decode, sped up), the router, and the SDK as its client."""

from __future__ import annotations

import asyncio
import contextlib
import dataclasses
import re
import socket
import time
from collections import Counter
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from typing import Any

import grpc
import pytest
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind
from security_helpers import SECURITY

from voltana.contract.state import InstanceState, Phase, SloTarget
from voltana.engine import SimEngine, SimEngineSettings
from voltana.rpc import create_channel
from voltana.sdk import (
    DeadlineExceededError,
    GenerationSummary,
    InvalidRequestError,
    TokenEvent,
    UnavailableError,
    VoltanaClient,
)
from voltana.services.router import RouterService, RouterSettings
from voltana.services.telemetry import (
    Completion,
    InstanceInfo,
    MemoryTelemetryStore,
    TelemetryClient,
    TelemetryService,
    TelemetrySettings,
)
from voltana.v1 import router_pb2, router_pb2_grpc

pytestmark = pytest.mark.integration

FAST_SPEEDUP = 50.0
# Slow enough that a long generation is still running when a test cancels it.
SLOW_SPEEDUP = 5.0
WAIT_TIMEOUT_S = 5.0


class TelemetrySampleSink:
    """Engine load reports → telemetry, one short report stream per sample."""

    def __init__(self, client: TelemetryClient) -> None:
        self._client = client

    async def send(self, state: InstanceState) -> None:
        await self._client.report_instance_samples([state])


class RecordingStore(MemoryTelemetryStore):
    """The memory store, keeping every completion the router reports for the test to read."""

    def __init__(self) -> None:
        super().__init__(clock=time.time)
        self.completions: list[Completion] = []

    async def record_completion(self, completion: Completion) -> None:
        self.completions.append(completion)
        await super().record_completion(completion)


@dataclass
class Cluster:
    telemetry: TelemetryService
    store: RecordingStore
    telemetry_client: TelemetryClient
    router: RouterService
    client: VoltanaClient
    prefills: list[SimEngine] = field(default_factory=list)
    decodes: list[SimEngine] = field(default_factory=list)

    @property
    def engines(self) -> list[SimEngine]:
        return [*self.prefills, *self.decodes]

    async def completions(self, count: int) -> list[Completion]:
        await wait_for(lambda: len(self.store.completions) >= count, "completion reports")
        return list(self.store.completions)


async def wait_for(condition: Callable[[], bool], what: str) -> None:
    loop = asyncio.get_running_loop()
    deadline = loop.time() + WAIT_TIMEOUT_S
    while not condition():
        if loop.time() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        await asyncio.sleep(0.01)


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


async def start_engine(
    stack: contextlib.AsyncExitStack,
    telemetry: TelemetryClient,
    phase: Phase,
    index: int,
    speedup: float,
    report_interval_ms: float,
) -> SimEngine:
    instance_id = f"{phase.value}-{index}"
    engine = SimEngine(
        SimEngineSettings(
            mode=phase.value,
            speedup=speedup,
            instance_id=instance_id,
            report_interval_ms=report_interval_ms,
            drain_timeout_s=0.5,
        ),
        sample_sink=TelemetrySampleSink(telemetry),
    )
    await stack.enter_async_context(engine)
    # Samples sent before this registration are rejected; the engine reports again.
    await telemetry.register_instance(
        InstanceInfo(
            instance_id,
            phase,
            engine.settings.gpu_key,
            engine_url=engine.url,
            bootstrap_host=engine.bootstrap_host if phase is Phase.PREFILL else "",
            bootstrap_port=engine.bootstrap_port if phase is Phase.PREFILL else 0,
        )
    )
    return engine


@contextlib.asynccontextmanager
async def running_cluster(
    *,
    prefills: int = 1,
    decodes: int = 1,
    speedup: float = FAST_SPEEDUP,
    report_interval_ms: float = 100.0,
    tracer_provider: TracerProvider | None = None,
    **router_options: Any,
) -> AsyncIterator[Cluster]:
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
        prefill_engines = [
            await start_engine(
                stack, telemetry_client, Phase.PREFILL, i, speedup, report_interval_ms
            )
            for i in range(prefills)
        ]
        decode_engines = [
            await start_engine(
                stack, telemetry_client, Phase.DECODE, i, speedup, report_interval_ms
            )
            for i in range(decodes)
        ]
        settings = RouterSettings(
            telemetry_address=telemetry.address,
            snapshot_interval_ms=20,
            **router_options,
            security=SECURITY,
        )
        router = RouterService(settings, tracer_provider=tracer_provider)
        await stack.enter_async_context(router)
        # Wait until the router sees every engine with its real endpoint.
        expected = {engine.url for engine in [*prefill_engines, *decode_engines]}

        def sees_engines() -> bool:
            snapshot = router.cluster.latest
            if snapshot is None:
                return False
            ids = (*snapshot.prefill, *snapshot.decode)
            return {router.cluster.endpoint(i).engine_url for i in ids} == expected

        await wait_for(sees_engines, "the router to see every engine")
        client = await stack.enter_async_context(
            VoltanaClient(router.address, tracer_provider=tracer_provider)
        )
        yield Cluster(
            telemetry, store, telemetry_client, router, client, prefill_engines, decode_engines
        )


@pytest.fixture
async def cluster() -> AsyncIterator[Cluster]:
    async with running_cluster() as running:
        yield running


async def collect(
    stream: AsyncIterator[TokenEvent | GenerationSummary],
) -> tuple[list[TokenEvent], GenerationSummary]:
    events: list[TokenEvent] = []
    summary: GenerationSummary | None = None
    async for item in stream:
        assert summary is None, "nothing may follow the summary"
        if isinstance(item, GenerationSummary):
            summary = item
        else:
            events.append(item)
    assert summary is not None
    return events, summary


# ---- Generate --------------------------------------------------------------------------------


async def test_generate_streams_every_token_then_a_summary(cluster: Cluster) -> None:
    events, summary = await collect(
        cluster.client.generate("Voltana routes requests to GPUs", max_new_tokens=40)
    )

    tokens = [token for event in events for token in event.token_ids]
    assert len(tokens) == 40 == summary.completion_tokens
    # Indices are contiguous: each chunk starts where the previous one ended.
    assert [event.index for event in events] == [
        sum(len(e.token_ids) for e in events[:i]) for i in range(len(events))
    ]
    assert "".join(event.text for event in events).strip()
    assert summary.finish_reason == "length"
    assert summary.prefill_instance == "prefill-0"
    assert summary.decode_instance == "decode-0"
    assert summary.prompt_tokens == 8  # the engine's count (its tokenizer), not the estimate
    assert 0 < summary.ttft_ms <= summary.e2e_latency_ms
    assert summary.mean_itl_ms > 0
    assert 0 < summary.bootstrap_room < 2**63
    assert len(summary.request_id) == 32  # router-assigned


async def test_generate_reports_the_completion_to_telemetry(cluster: Cluster) -> None:
    result = await cluster.client.generate(
        input_ids=[1001, 1002, 1003],
        max_new_tokens=5,
        ttft_slo_ms=500.0,
        request_id="req-telemetry",
        stream=False,
    )

    assert result.summary.request_id == "req-telemetry"
    assert len(result.token_ids) == 5
    (record,) = await cluster.completions(1)
    assert record.request_id == "req-telemetry"
    assert record.ok and record.reason == "length"
    assert (record.prefill_id, record.decode_id) == ("prefill-0", "decode-0")
    assert (record.input_tokens, record.output_tokens) == (3, 5)
    assert record.ttft_ms == pytest.approx(result.summary.ttft_ms)
    assert record.slo is not None and record.slo.ttft_ms == 500.0
    assert (
        record.slo.itl_ms == RouterSettings(security=SECURITY).slo.itl_ms
    )  # left to the cluster's target
    assert record.arrival_s < record.finished_at_s


async def test_same_prompt_gives_the_same_text_through_any_pair() -> None:
    async with running_cluster(prefills=2, decodes=2) as cluster:
        first = await cluster.client.generate(
            "deterministic output", max_new_tokens=6, stream=False
        )
        second = await cluster.client.generate(
            "deterministic output", max_new_tokens=6, stream=False
        )

    # Round-robin moved to the other pair; the simulated tokens depend only on the prompt.
    assert first.summary.prefill_instance != second.summary.prefill_instance
    assert first.summary.decode_instance != second.summary.decode_instance
    assert first.text == second.text and first.token_ids == second.token_ids


async def test_burst_between_snapshots_spreads_over_instances() -> None:
    # Engines report only at start, so every request of the burst sees the same snapshot;
    # only the router's optimistic bumps tell the least-loaded router the load it added.
    # Real-time engines and 32 tokens: no request may finish (and leave the books) before the
    # burst's last one is placed, however slow the host (at 50x, 8 tokens took ~2 ms: CI saw 4/2).
    async with running_cluster(
        decodes=2, router="least-loaded", report_interval_ms=60_000.0, speedup=1.0
    ) as cluster:
        results = await asyncio.gather(
            *(
                cluster.client.generate(f"burst {i}", max_new_tokens=32, stream=False)
                for i in range(6)
            )
        )

    decode_counts = Counter(result.summary.decode_instance for result in results)
    assert decode_counts == {"decode-0": 3, "decode-1": 3}


# ---- Place -----------------------------------------------------------------------------------


async def test_place_answers_without_sending_anything() -> None:
    async with running_cluster(prefills=2, decodes=2) as cluster:
        placements = [await cluster.client.place("where would this go?") for _ in range(3)]
        await asyncio.sleep(0.1)

        # A dry run: no engine saw a request, and the round-robin turn did not move.
        for engine in cluster.engines:
            assert engine.core.metrics.prompt_tokens_total == 0
            assert engine.core.metrics.generation_tokens_total == 0
        assert len(set(placements)) == 1
        placement = placements[0]
        assert (placement.prefill_id, placement.decode_id) == ("prefill-0", "decode-0")
        assert placement.policy_name == "round-robin"
        assert placement.reason == "round-robin"
        assert placement.predicted_ttft_ms is None and placement.candidates == ()

        result = await cluster.client.generate("where would this go?", stream=False)
        assert result.summary.prefill_instance == placement.prefill_id
        next_placement = await cluster.client.place("and now?")
        assert next_placement.prefill_id == "prefill-1"


async def test_dynamic_policy_routes_and_explains_itself() -> None:
    # The same "voltana" RoutingPolicy the simulator runs, on the live snapshot.
    async with running_cluster(decodes=2, policy="voltana") as cluster:
        placement = await cluster.client.place("energy-aware placement", max_new_tokens=16)
        result = await cluster.client.generate(
            "energy-aware placement", max_new_tokens=16, stream=False
        )

    assert placement.policy_name == "voltana"
    assert placement.decode_clock_mhz is not None and placement.decode_clock_mhz > 0
    assert placement.decode_id in {"decode-0", "decode-1"}
    assert result.summary.completion_tokens == 16
    assert result.summary.decode_instance == placement.decode_id


# ---- bad requests and missing instances -------------------------------------------------------


@pytest.mark.parametrize(
    ("arguments", "message"),
    [
        ({"prompt": ""}, "the prompt is empty"),
        ({"prompt": "   \n"}, "the prompt is empty"),
        ({"input_ids": []}, "the prompt is empty"),
        ({"input_ids": [5, -1]}, "negative token id"),
        ({"prompt": "x" * 500}, "the prompt is too long: about 125 tokens"),
        ({"input_ids": list(range(1000, 1101))}, "the prompt is too long: 101 tokens"),
        ({"prompt": "hi", "max_new_tokens": 0}, "max_new_tokens must be > 0"),
        ({"prompt": "hi", "max_new_tokens": 65}, "over the limit of 64"),
        ({"prompt": "hi", "max_new_tokens": 8, "temperature": -1.0}, "temperature must be >= 0"),
        ({"prompt": "hi", "max_new_tokens": 8, "ttft_slo_ms": -5.0}, r"slo.ttft_ms must be .*-5"),
        (
            {"prompt": "hi", "max_new_tokens": 8, "itl_slo_ms": 1e308},
            r"slo.itl_ms must be .*1e\+308",
        ),
        (
            {"prompt": "hi", "max_new_tokens": 8, "request_id": "r" * 300},
            "request_id is 300 characters long",
        ),
        (
            {"prompt": "hi", "max_new_tokens": 8, "request_id": "a\nb"},
            r"request_id 'a\\nb' must be printable",
        ),
        (
            {"prompt": "hi", "max_new_tokens": 8, "stop": ["s" * 300]},
            "a stop string is 300 characters long",
        ),
    ],
)
async def test_invalid_requests_are_refused(arguments: dict[str, Any], message: str) -> None:
    async with running_cluster(
        max_prompt_tokens=100, max_new_tokens_limit=64, default_max_new_tokens=16
    ) as cluster:
        with pytest.raises(InvalidRequestError, match=message) as raised:
            await cluster.client.generate(**arguments, stream=False)
        assert raised.value.code == grpc.StatusCode.INVALID_ARGUMENT
        if not {"temperature", "request_id", "stop"} & set(arguments):  # not Place's arguments
            with pytest.raises(InvalidRequestError, match=message):
                await cluster.client.place(**arguments)
        # Nothing reached an engine; telemetry has the refusal on record, with its status.
        [record] = await cluster.completions(1)
        assert (record.ok, record.status, record.instance_ids) == (False, "INVALID_ARGUMENT", ())
        assert re.search(message, record.reason)


async def test_request_without_prompt_is_invalid(cluster: Cluster) -> None:
    # Below the SDK (which refuses it itself): the router's own check.
    async with create_channel(cluster.router.address, security=SECURITY) as channel:
        stub = router_pb2_grpc.RouterServiceStub(channel)
        with pytest.raises(grpc.aio.AioRpcError) as raised:
            async for _ in stub.Generate(router_pb2.GenerateRequest(max_new_tokens=4)):
                pass
    assert raised.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert "needs a prompt" in (raised.value.details() or "")


async def test_engine_refusal_is_invalid_argument_with_the_engine_message(
    cluster: Cluster,
) -> None:
    with pytest.raises(InvalidRequestError, match="outside the vocabulary"):
        await cluster.client.generate(input_ids=[10**8], max_new_tokens=4, stream=False)
    (record,) = await cluster.completions(1)
    assert not record.ok and "outside the vocabulary" in record.reason


async def test_no_instances_is_unavailable() -> None:
    async with running_cluster(prefills=0, decodes=0) as cluster:
        with pytest.raises(UnavailableError, match="no prefill instance available") as raised:
            await cluster.client.generate("hello", stream=False)
        assert raised.value.code == grpc.StatusCode.UNAVAILABLE
        with pytest.raises(UnavailableError, match="no prefill instance"):
            await cluster.client.place("hello")


async def test_missing_decode_side_is_unavailable() -> None:
    async with running_cluster(prefills=1, decodes=0) as cluster:
        with pytest.raises(UnavailableError, match="no decode instance available"):
            await cluster.client.generate("hello", stream=False)


async def test_without_telemetry_requests_are_unavailable() -> None:
    settings = RouterSettings(
        telemetry_address=f"127.0.0.1:{free_port()}",
        initial_snapshot_timeout_s=0.0,
        security=SECURITY,
    )
    async with RouterService(settings) as router, VoltanaClient(router.address) as client:
        with pytest.raises(UnavailableError, match="no cluster snapshot from telemetry"):
            await client.generate("hello", stream=False)


async def test_unreachable_engine_is_unavailable(cluster: Cluster) -> None:
    # The only prefill instance now points at a port nobody listens on.
    dead_port = free_port()
    await cluster.telemetry_client.register_instance(
        InstanceInfo(
            "prefill-0",
            Phase.PREFILL,
            "a100-80g",
            engine_url=f"http://127.0.0.1:{dead_port}",
            bootstrap_host="127.0.0.1",
            bootstrap_port=dead_port,
        )
    )
    await wait_for(
        lambda: cluster.router.cluster.endpoint("prefill-0").bootstrap_port == dead_port,
        "the new endpoint",
    )
    with pytest.raises(UnavailableError, match="cannot connect"):
        await cluster.client.generate("hello", max_new_tokens=4, stream=False)
    # The decode request was closed with it.
    await wait_for(lambda: not cluster.decodes[0].core.requests(), "the decode to drop it")


# ---- cancellation, deadlines, shutdown --------------------------------------------------------


def engines_idle(cluster: Cluster) -> Callable[[], bool]:
    return lambda: all(not engine.core.requests() for engine in cluster.engines)


async def test_client_cancel_cancels_the_engine_requests() -> None:
    async with running_cluster(speedup=SLOW_SPEEDUP) as cluster:
        stream = cluster.client.generate("a long story", max_new_tokens=5000)
        received = [await anext(stream) for _ in range(3)]
        assert all(isinstance(item, TokenEvent) for item in received)
        decode = cluster.decodes[0]
        assert decode.core.live_requests == 1

        await stream.aclose()

        await wait_for(engines_idle(cluster), "the engines to drop the request")
        assert decode.core.metrics.aborted_requests_total == 1
        assert decode.core.metrics.requests_total == 0  # it never finished
        (record,) = await cluster.completions(1)
        assert not record.ok and record.reason == "cancelled by the client"
        assert 3 <= record.output_tokens < 5000


async def test_client_deadline_is_deadline_exceeded_and_frees_the_engines() -> None:
    async with running_cluster(speedup=SLOW_SPEEDUP) as cluster:
        with pytest.raises(DeadlineExceededError) as raised:
            await cluster.client.generate(
                "a long story", max_new_tokens=5000, timeout_s=0.3, stream=False
            )
        assert raised.value.code == grpc.StatusCode.DEADLINE_EXCEEDED
        await wait_for(engines_idle(cluster), "the engines to drop the request")
        (record,) = await cluster.completions(1)
        assert not record.ok and record.ttft_ms is not None


async def test_router_engine_timeout_is_deadline_exceeded() -> None:
    async with running_cluster(speedup=SLOW_SPEEDUP, engine_request_timeout_s=0.3) as cluster:
        with pytest.raises(DeadlineExceededError, match="did not finish request req-slow"):
            await cluster.client.generate(
                "a long story", max_new_tokens=5000, request_id="req-slow", stream=False
            )
        await wait_for(engines_idle(cluster), "the engines to drop the request")


async def test_stop_lets_running_requests_finish_and_refuses_new_ones() -> None:
    async with running_cluster(speedup=SLOW_SPEEDUP, shutdown_grace_s=10.0) as cluster:
        stream = cluster.client.generate("finish me", max_new_tokens=100)
        first = await anext(stream)
        assert isinstance(first, TokenEvent)

        stopping = asyncio.create_task(cluster.router.stop())
        events, summary = await collect(stream)
        await stopping

        assert summary.completion_tokens == 100
        assert first.index == 0 and len(events) >= 1
        with pytest.raises(UnavailableError):
            await cluster.client.generate("too late", max_new_tokens=4, stream=False)
        # The completion was reported before the router let go of telemetry.
        assert [c.request_id for c in cluster.store.completions] == [summary.request_id]


# ---- tracing ---------------------------------------------------------------------------------


GENERATE = "voltana.v1.RouterService/Generate"


def spans_by_kind(exporter: InMemorySpanExporter) -> dict[tuple[str, SpanKind], ReadableSpan]:
    return {(span.name, span.kind): span for span in exporter.get_finished_spans()}


async def test_spans_link_the_client_and_the_router() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with running_cluster(tracer_provider=provider) as cluster:
        summary = (
            await cluster.client.generate("trace me", max_new_tokens=4, stream=False)
        ).summary
        # The server span ends just after the completion went out.
        await wait_for(
            lambda: (GENERATE, SpanKind.SERVER) in spans_by_kind(exporter), "the server span"
        )
        spans = spans_by_kind(exporter)

    sdk_span = spans["voltana.client.generate", SpanKind.INTERNAL]
    client_span = spans[GENERATE, SpanKind.CLIENT]
    server_span = spans[GENERATE, SpanKind.SERVER]
    assert client_span.parent is not None and sdk_span.context is not None
    assert client_span.parent.span_id == sdk_span.context.span_id
    assert client_span.context is not None and server_span.context is not None
    assert server_span.parent is not None
    assert server_span.parent.span_id == client_span.context.span_id
    assert server_span.context.trace_id == client_span.context.trace_id
    for child in ("placement", "dispatch"):
        parent = spans[child, SpanKind.INTERNAL].parent
        assert parent is not None and parent.span_id == server_span.context.span_id
    # The router's engine calls are the dispatch span's HTTP CLIENT children.
    dispatch = spans["dispatch", SpanKind.INTERNAL]
    engine_calls = [
        span
        for span in exporter.get_finished_spans()
        if span.kind is SpanKind.CLIENT and span.name == "POST /generate"
    ]
    assert len(engine_calls) == 2
    for call in engine_calls:
        assert call.parent is not None and dispatch.context is not None
        assert call.parent.span_id == dispatch.context.span_id
    assert [event.name for event in server_span.events] == ["first_token"]
    attributes = dict(server_span.attributes or {})
    assert attributes["rpc.system"] == "grpc"
    assert attributes["rpc.service"] == "voltana.v1.RouterService"
    assert attributes["rpc.method"] == "Generate"
    assert attributes["rpc.grpc.status_code"] == 0
    assert attributes["server.address"] == "127.0.0.1"
    assert attributes["voltana.request_id"] == summary.request_id
    assert attributes["voltana.prefill_instance"] == "prefill-0"
    assert attributes["voltana.decode_instance"] == "decode-0"
    assert attributes["voltana.bootstrap_room"] == summary.bootstrap_room
    assert attributes["voltana.completion_tokens"] == 4
    assert attributes["voltana.finish_reason"] == "length"
    assert dict(spans["placement", SpanKind.INTERNAL].attributes or {})["voltana.policy"] == (
        "static-max"
    )


async def test_failed_request_marks_its_span() -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with running_cluster(prefills=0, decodes=0, tracer_provider=provider) as cluster:
        with pytest.raises(UnavailableError):
            await cluster.client.generate("hello", stream=False)
        await wait_for(
            lambda: (GENERATE, SpanKind.SERVER) in spans_by_kind(exporter), "the server span"
        )
        spans = spans_by_kind(exporter)

    server_span = spans[GENERATE, SpanKind.SERVER]
    assert not server_span.status.is_ok
    assert (
        dict(server_span.attributes or {})["rpc.grpc.status_code"]
        == (grpc.StatusCode.UNAVAILABLE.value[0])
    )
    assert not spans[GENERATE, SpanKind.CLIENT].status.is_ok
    assert not spans["placement", SpanKind.INTERNAL].status.is_ok
    assert ("dispatch", SpanKind.INTERNAL) not in spans


def test_settings_reject_nonsense() -> None:
    from voltana.errors import ConfigError

    with pytest.raises(ConfigError, match="max_new_tokens_limit"):
        RouterSettings(default_max_new_tokens=10, max_new_tokens_limit=5, security=SECURITY)
    with pytest.raises(ConfigError, match="telemetry_address"):
        RouterSettings(telemetry_address="nowhere", security=SECURITY)
    with pytest.raises(ConfigError, match="unknown policy"):
        RouterService(RouterSettings(policy="no-such-policy", security=SECURITY))
    assert (
        dataclasses.replace(RouterSettings(security=SECURITY), router="least-loaded").router
        == "least-loaded"
    )


async def test_requests_without_an_slo_follow_the_cluster_slo_telemetry_holds(
    cluster: Cluster,
) -> None:
    """SetSlo changes the cluster SLO in telemetry; the router takes it from the snapshots
    for every request that brings none of its own."""
    await cluster.telemetry_client.set_cluster_slo(SloTarget(ttft_ms=321.0, itl_ms=21.0))
    servicer = cluster.router.servicer
    assert servicer is not None
    await wait_for(
        lambda: servicer.cluster_slo == SloTarget(ttft_ms=321.0, itl_ms=21.0),
        "the router following the cluster SLO",
    )
    await cluster.client.generate(input_ids=[7, 8, 9], max_new_tokens=2, stream=False)
    await cluster.client.generate(
        input_ids=[7, 8, 9], max_new_tokens=2, itl_slo_ms=90.0, stream=False
    )
    followed, own = sorted(await cluster.completions(2), key=lambda c: c.slo.itl_ms if c.slo else 0)
    assert followed.slo == SloTarget(ttft_ms=321.0, itl_ms=21.0)
    assert own.slo == SloTarget(ttft_ms=321.0, itl_ms=90.0)


async def test_without_tracing_the_callers_trace_context_reaches_the_engines(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    # No tracer provider records: the router skips its spans, but a caller's traceparent still
    # travels on to both engines (the gRPC context continued, the engine client injecting it).
    from opentelemetry import context as otel_context
    from opentelemetry import trace
    from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags

    from voltana.engine import http1
    from voltana.rpc.tracing import records

    if records(None):
        pytest.skip("a global tracer provider records in this process")
    sent: list[dict[str, str]] = []
    original = http1.ConnectionPool.request

    async def recording(
        self: http1.ConnectionPool, method: str, url: str, body: bytes, headers: Any, **kw: Any
    ) -> http1.Response:
        sent.append(dict(headers))
        return await original(self, method, url, body, headers, **kw)

    monkeypatch.setattr(http1.ConnectionPool, "request", recording)
    trace_id = 0x1234ABCD
    caller = SpanContext(trace_id, 0xABC, is_remote=False, trace_flags=TraceFlags.SAMPLED)
    async with running_cluster() as cluster:
        token = otel_context.attach(trace.set_span_in_context(NonRecordingSpan(caller)))
        try:
            await cluster.client.generate("trace me", max_new_tokens=2, stream=False)
        finally:
            otel_context.detach(token)
        await cluster.client.generate("no trace", max_new_tokens=2, stream=False)
    assert len(sent) == 4
    assert [h["traceparent"].split("-")[1] for h in sent[:2]] == [f"{trace_id:032x}"] * 2
    assert all("traceparent" not in h for h in sent[2:])
