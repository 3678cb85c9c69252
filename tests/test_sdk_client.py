"""The client SDK against a scripted fake RouterService on loopback gRPC."""

from __future__ import annotations

import asyncio
import functools
import socket
import sys
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import grpc
import grpc.aio
import pytest
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import SimpleSpanProcessor
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter
from opentelemetry.trace import SpanKind

from voltana import errors
from voltana.rpc import start_grpc_server, stop_grpc_server
from voltana.rpc.names import ROUTER_SERVICE
from voltana.sdk import (
    DeadlineExceededError,
    GenerationResult,
    GenerationSummary,
    InvalidRequestError,
    ServerError,
    SyncVoltanaClient,
    TokenEvent,
    UnavailableError,
    VoltanaClient,
    VoltanaClientError,
)
from voltana.v1 import common_pb2, router_pb2, router_pb2_grpc

pytestmark = pytest.mark.integration

REPO_ROOT = Path(__file__).resolve().parents[1]
Context = grpc.aio.ServicerContext[Any, Any]


class FakeRouter(router_pb2_grpc.RouterServiceServicer):
    """Answers by prompt: "tokens:N" streams N one-token chunks, "slow" streams until
    cancelled, "fail:CODE:message" aborts with CODE, "eof" ends without a completion."""

    def __init__(self) -> None:
        self.requests: list[router_pb2.GenerateRequest] = []
        self.metadata: list[dict[str, str]] = []
        self.peers: list[str] = []
        self.cancelled = asyncio.Event()

    def _record(self, request: router_pb2.GenerateRequest, context: Context) -> None:
        self.requests.append(request)
        self.metadata.append({str(m[0]): str(m[1]) for m in context.invocation_metadata() or ()})
        self.peers.append(context.peer())

    async def Generate(
        self, request: router_pb2.GenerateRequest, context: Context
    ) -> AsyncIterator[router_pb2.GenerateResponse]:
        self._record(request, context)
        prompt = request.text
        if prompt.startswith("fail:"):
            _, code, message = prompt.split(":", 2)
            await context.abort(grpc.StatusCode[code], message)
        if prompt == "eof":
            yield router_pb2.GenerateResponse(chunk=router_pb2.TokenChunk(text="x", index=0))
            return
        if prompt == "slow":
            try:
                for index in range(10_000):
                    yield router_pb2.GenerateResponse(
                        chunk=router_pb2.TokenChunk(
                            text=f" t{index}", token_ids=[index], index=index
                        )
                    )
                    await asyncio.sleep(0.02)
            except asyncio.CancelledError:
                self.cancelled.set()
                raise
            return
        count = int(prompt.removeprefix("tokens:")) if prompt.startswith("tokens:") else 3
        for index in range(count):
            yield router_pb2.GenerateResponse(
                chunk=router_pb2.TokenChunk(text=f" w{index}", token_ids=[100 + index], index=index)
            )
        yield router_pb2.GenerateResponse(
            completion=router_pb2.Completion(
                finish_reason="length",
                prompt_tokens=len(request.input_ids.ids) or 2,
                completion_tokens=count,
                ttft_ms=12.5,
                mean_itl_ms=3.25,
                prefill_instance="prefill-7",
                decode_instance="decode-3",
                request_id=request.request_id or "assigned-id",
                bootstrap_room=2**62 + 5,
                e2e_latency_ms=40.0,
            )
        )

    async def Place(
        self, request: router_pb2.GenerateRequest, context: Context
    ) -> router_pb2.Placement:
        self._record(request, context)
        return router_pb2.Placement(
            prefill_id="prefill-7",
            decode_id="decode-3",
            reason="lowest clock that meets the ITL SLO",
            predicted_itl_ms=21.0,
            decode_clock_mhz=1005,
            policy_name="eco-route",
            candidates=[
                router_pb2.CandidateScore(
                    instance_id="decode-3",
                    phase=common_pb2.PHASE_DECODE,
                    score=0.5,
                    feasible=True,
                    required_sm_clock_mhz=1005,
                    predicted_latency_ms=21.0,
                    reason="stays below the batch boundary",
                )
            ],
        )


@pytest.fixture
async def fake_router() -> AsyncIterator[tuple[FakeRouter, str]]:
    servicer = FakeRouter()
    register = functools.partial(router_pb2_grpc.add_RouterServiceServicer_to_server, servicer)
    started = await start_grpc_server("127.0.0.1:0", [register], [ROUTER_SERVICE])
    try:
        yield servicer, f"127.0.0.1:{started.port}"
    finally:
        await stop_grpc_server(started.server, 0.5)


@pytest.fixture
async def client(fake_router: tuple[FakeRouter, str]) -> AsyncIterator[VoltanaClient]:
    async with VoltanaClient(fake_router[1]) as sdk_client:
        yield sdk_client


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


# ---- generate --------------------------------------------------------------------------------


async def test_stream_yields_token_events_then_the_summary(
    fake_router: tuple[FakeRouter, str], client: VoltanaClient
) -> None:
    servicer, _ = fake_router
    stream = client.generate(
        "tokens:4",
        max_new_tokens=4,
        temperature=0.2,
        stop=["\n"],
        ttft_slo_ms=300.0,
        request_id="r-1",
    )
    items = [item async for item in stream]

    assert items[:4] == [TokenEvent(f" w{i}", (100 + i,), i) for i in range(4)]
    summary = items[4]
    assert isinstance(summary, GenerationSummary) and len(items) == 5
    assert summary == stream.summary
    assert (summary.prefill_instance, summary.decode_instance) == ("prefill-7", "decode-3")
    assert summary.bootstrap_room == 2**62 + 5 and summary.request_id == "r-1"
    assert stream.text == " w0 w1 w2 w3"
    (sent,) = servicer.requests
    assert sent.text == "tokens:4" and sent.max_new_tokens == 4
    assert sent.temperature == pytest.approx(0.2) and not sent.HasField("top_p")
    assert list(sent.stop) == ["\n"] and sent.request_id == "r-1"
    assert (sent.slo.ttft_ms, sent.slo.itl_ms) == (300.0, 0.0)  # 0 = the cluster's ITL target


async def test_non_streaming_generate_returns_the_whole_result(
    fake_router: tuple[FakeRouter, str], client: VoltanaClient
) -> None:
    result = await client.generate(input_ids=[7, 8, 9], max_new_tokens=None, stream=False)

    assert isinstance(result, GenerationResult)
    assert result.text == " w0 w1 w2" and result.token_ids == (100, 101, 102)
    assert result.summary.prompt_tokens == 3
    (sent,) = fake_router[0].requests
    assert list(sent.input_ids.ids) == [7, 8, 9] and not sent.HasField("max_new_tokens")
    assert not sent.HasField("slo")


async def test_calls_reuse_one_connection(
    fake_router: tuple[FakeRouter, str], client: VoltanaClient
) -> None:
    for _ in range(3):
        await client.generate("tokens:1", stream=False)
    await client.place("tokens:1")
    peers = fake_router[0].peers
    assert len(peers) == 4 and len(set(peers)) == 1


@pytest.mark.parametrize(
    ("arguments", "message"),
    [({}, "not both or neither"), ({"prompt": "a", "input_ids": [1]}, "not both or neither")],
)
async def test_prompt_and_input_ids_are_exclusive(
    fake_router: tuple[FakeRouter, str],
    client: VoltanaClient,
    arguments: dict[str, Any],
    message: str,
) -> None:
    with pytest.raises(InvalidRequestError, match=message):
        client.generate(**arguments)
    with pytest.raises(InvalidRequestError, match=message):
        await client.place(**arguments)
    assert fake_router[0].requests == []


# ---- errors ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("code", "error_class", "base_class"),
    [
        ("INVALID_ARGUMENT", InvalidRequestError, errors.InvalidArgumentError),
        ("UNAVAILABLE", UnavailableError, errors.UnavailableError),
        ("DEADLINE_EXCEEDED", DeadlineExceededError, errors.DeadlineExceededError),
        ("INTERNAL", ServerError, VoltanaClientError),
    ],
)
async def test_status_codes_become_typed_errors(
    client: VoltanaClient,
    code: str,
    error_class: type[VoltanaClientError],
    base_class: type[Exception],
) -> None:
    with pytest.raises(error_class, match="the router says no") as raised:
        await client.generate(f"fail:{code}:the router says no", stream=False)
    assert isinstance(raised.value, base_class)
    assert raised.value.code == grpc.StatusCode[code]


async def test_stream_without_completion_is_an_error(client: VoltanaClient) -> None:
    with pytest.raises(VoltanaClientError, match="without a completion"):
        await client.generate("eof", stream=False)


async def test_timeout_is_deadline_exceeded(client: VoltanaClient) -> None:
    with pytest.raises(DeadlineExceededError):
        await client.generate("slow", timeout_s=0.2, stream=False)


async def test_client_default_timeout_applies(fake_router: tuple[FakeRouter, str]) -> None:
    async with VoltanaClient(fake_router[1], timeout_s=0.2) as sdk_client:
        with pytest.raises(DeadlineExceededError):
            await sdk_client.generate("slow", stream=False)


async def test_closing_a_stream_cancels_the_call(
    fake_router: tuple[FakeRouter, str], client: VoltanaClient
) -> None:
    async with client.generate("slow") as stream:
        async for item in stream:
            assert isinstance(item, TokenEvent)
            if item.index == 2:
                break
    await asyncio.wait_for(fake_router[0].cancelled.wait(), 5.0)
    assert [item async for item in stream] == []  # a closed stream yields nothing more


async def test_unreachable_router_is_unavailable() -> None:
    async with VoltanaClient(f"127.0.0.1:{free_port()}") as sdk_client:
        with pytest.raises(UnavailableError):
            await sdk_client.wait_until_ready(0.2)
        with pytest.raises(UnavailableError):
            await sdk_client.generate("tokens:1", stream=False)


async def test_closed_client_refuses_calls(client: VoltanaClient) -> None:
    await client.close()
    with pytest.raises(VoltanaClientError, match="closed"):
        await client.generate("tokens:1", stream=False)


# ---- place -----------------------------------------------------------------------------------


async def test_place_returns_the_placement_with_candidates(client: VoltanaClient) -> None:
    placement = await client.place("tokens:1", max_new_tokens=16, itl_slo_ms=30.0)

    assert (placement.prefill_id, placement.decode_id) == ("prefill-7", "decode-3")
    assert placement.policy_name == "eco-route"
    assert placement.predicted_itl_ms == 21.0 and placement.predicted_ttft_ms is None
    assert placement.decode_clock_mhz == 1005 and placement.prefill_clock_mhz is None
    (candidate,) = placement.candidates
    assert candidate.phase == "decode" and candidate.feasible
    assert candidate.required_sm_clock_mhz == 1005 and candidate.predicted_latency_ms == 21.0


# ---- tracing and metadata --------------------------------------------------------------------


async def test_trace_context_and_metadata_travel_with_the_call(
    fake_router: tuple[FakeRouter, str],
) -> None:
    exporter = InMemorySpanExporter()
    provider = TracerProvider()
    provider.add_span_processor(SimpleSpanProcessor(exporter))
    async with VoltanaClient(
        fake_router[1], metadata=[("x-tenant", "blue")], tracer_provider=provider
    ) as sdk_client:
        result = await sdk_client.generate("tokens:2", stream=False)

    # The SDK's span carries the outcome; the gRPC instrumentation's CLIENT span (its child)
    # is the one whose context travels in the metadata.
    spans = {span.name: span for span in exporter.get_finished_spans()}
    assert set(spans) == {"voltana.client.generate", "voltana.v1.RouterService/Generate"}
    sdk_span, call_span = (
        spans["voltana.client.generate"],
        spans["voltana.v1.RouterService/Generate"],
    )
    assert call_span.kind is SpanKind.CLIENT and call_span.context is not None
    assert call_span.parent is not None and sdk_span.context is not None
    assert call_span.parent.span_id == sdk_span.context.span_id
    metadata = fake_router[0].metadata[0]
    assert metadata["x-tenant"] == "blue"
    trace_id, span_id = metadata["traceparent"].split("-")[1:3]
    assert int(trace_id, 16) == sdk_span.context.trace_id
    assert int(span_id, 16) == call_span.context.span_id
    attributes = dict(call_span.attributes or {})
    assert attributes["rpc.system"] == "grpc" and attributes["rpc.method"] == "Generate"
    assert attributes["server.address"] == "127.0.0.1"
    assert dict(sdk_span.attributes or {})["voltana.request_id"] == result.summary.request_id


# ---- sync client -----------------------------------------------------------------------------


def run_sync_client(address: str) -> tuple[GenerationResult, list[Any], list[Any]]:
    with SyncVoltanaClient(address) as sdk_client:
        result = sdk_client.generate("tokens:3", max_new_tokens=3)
        streamed = list(sdk_client.stream("tokens:2"))
        partial: list[Any] = []
        for item in sdk_client.stream("slow"):
            partial.append(item)
            if len(partial) == 2:
                break
        try:
            sdk_client.generate("fail:INVALID_ARGUMENT:bad prompt")
        except InvalidRequestError as error:
            partial.append(error)
    return result, streamed, partial


async def test_sync_client_from_a_plain_thread(fake_router: tuple[FakeRouter, str]) -> None:
    servicer, address = fake_router
    result, streamed, partial = await asyncio.to_thread(run_sync_client, address)

    assert result.text == " w0 w1 w2" and result.summary.completion_tokens == 3
    assert [type(item) for item in streamed] == [TokenEvent, TokenEvent, GenerationSummary]
    assert [item.index for item in partial[:2]] == [0, 1]
    assert isinstance(partial[2], InvalidRequestError) and "bad prompt" in str(partial[2])
    # Leaving the "slow" stream early cancelled it on the server.
    await asyncio.wait_for(servicer.cancelled.wait(), 5.0)


# ---- example script --------------------------------------------------------------------------


async def test_example_script_prints_the_stream(fake_router: tuple[FakeRouter, str]) -> None:
    process = await asyncio.create_subprocess_exec(
        sys.executable,
        str(REPO_ROOT / "examples" / "generate.py"),
        fake_router[1],
        "tokens:3",
        "--max-new-tokens",
        "3",
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.PIPE,
    )
    stdout, stderr = await asyncio.wait_for(process.communicate(), 30.0)

    assert process.returncode == 0, stderr.decode()
    output = stdout.decode()
    assert output.startswith(" w0 w1 w2")
    assert "3 tokens" in output and "prefill=prefill-7 decode=decode-3" in output
