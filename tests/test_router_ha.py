"""Routers that scale out and survive: the SIGTERM drain, active-active routers sharing their
in-flight placements through telemetry, and the SDK failing over between routers.

Real TelemetryService (memory store), real simulated SGLang engines, real routers (gRPC and
HTTP) and the SDK on loopback.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import os
import signal
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
from test_router_resilience import RecordingStore, SampleSink, info_for

from voltana.cli.serve_cmd import serve_until_signal
from voltana.contract.state import Phase
from voltana.engine import SimEngine, SimEngineSettings
from voltana.rpc import create_channel
from voltana.rpc.names import ROUTER_SERVICE
from voltana.sdk import GenerationSummary, TokenEvent, UnavailableError, VoltanaClient
from voltana.services.router import RouterService, RouterSettings
from voltana.services.telemetry import (
    TelemetryClient,
    TelemetryService,
    TelemetrySettings,
)
from voltana.services.telemetry.records import PendingPlacement

pytestmark = pytest.mark.integration

WAIT_TIMEOUT_S = 10.0
SHARE_TTL_S = 0.5


@dataclass
class Rig:
    store: RecordingStore
    telemetry: TelemetryService
    telemetry_client: TelemetryClient
    stack: contextlib.AsyncExitStack
    engines: dict[str, SimEngine] = field(default_factory=dict)

    def router(self, **options: Any) -> RouterService:
        options.setdefault("health_check_interval_s", 0.0)
        return RouterService(
            RouterSettings(
                telemetry_address=self.telemetry.address,
                snapshot_interval_ms=20,
                placement_report_interval_ms=20,
                initial_snapshot_timeout_s=WAIT_TIMEOUT_S,
                security=SECURITY,
                **options,
            )
        )

    async def started_router(self, **options: Any) -> RouterService:
        router = await self.stack.enter_async_context(self.router(**options))
        await wait_for(
            lambda: router.cluster.endpoints.keys() >= self.engines.keys(),
            "the router to see every engine",
            WAIT_TIMEOUT_S,
        )
        return router


@contextlib.asynccontextmanager
async def rig(*, speedup: float = 5.0, report_interval_ms: float = 50.0) -> AsyncIterator[Rig]:
    """One prefill and one decode engine reporting every ``report_interval_ms``."""
    async with contextlib.AsyncExitStack() as stack:
        store = RecordingStore()
        telemetry = await stack.enter_async_context(
            TelemetryService(
                TelemetrySettings(
                    watch_min_interval_ms=20, router_share_ttl_s=SHARE_TTL_S, security=SECURITY
                ),
                store=store,
            )
        )
        client = await stack.enter_async_context(
            TelemetryClient(telemetry.address, security=SECURITY)
        )
        found = Rig(store, telemetry, client, stack)
        for phase in (Phase.PREFILL, Phase.DECODE):
            instance_id = f"{phase.value}-0"
            engine = await stack.enter_async_context(
                SimEngine(
                    SimEngineSettings(
                        mode=phase.value,
                        instance_id=instance_id,
                        report_interval_ms=report_interval_ms,
                        speedup=speedup,
                    ),
                    sample_sink=SampleSink(client),
                )
            )
            bootstrap = engine.bootstrap_port if phase is Phase.PREFILL else 0
            await client.register_instance(info_for(instance_id, phase, engine.url, bootstrap))
            found.engines[instance_id] = engine
        yield found


def inflight(router: RouterService, instance_id: str) -> int:
    state = router.cluster.view_of(instance_id)
    return -1 if state is None else state.inflight_requests


async def first_token(stream: Any) -> None:
    event = await anext(stream)
    assert isinstance(event, TokenEvent)


async def read_to_end(stream: Any) -> GenerationSummary:
    summary = None
    async for event in stream:
        if isinstance(event, GenerationSummary):
            summary = event
    assert summary is not None
    return summary


def requests_served(router: RouterService) -> float:
    registry = router.metrics_registry
    return sum(
        registry.get_sample_value("voltana_router_requests_total", {"protocol": p, "status": s})
        or 0.0
        for p in ("grpc", "http")
        for s in ("OK", "UNAVAILABLE", "CANCELLED")
    )


# ---- active-active routers share their in-flight placements ------------------------------


async def test_a_second_routers_inflight_requests_show_in_the_firsts_view_exactly_once() -> None:
    # Engines that report once at start and then not for minutes: a placement stays in its
    # router's ledger (no report includes it), so only sharing can make the other see it.
    async with rig(report_interval_ms=600_000.0) as found:
        first = await found.started_router(router_id="router-a")
        second = await found.started_router(router_id="router-b")
        async with VoltanaClient(second.address) as client:
            stream = client.generate("a long story", max_new_tokens=16_000)
            await first_token(stream)
            for instance_id in ("prefill-0", "decode-0"):
                await wait_for(
                    lambda i=instance_id: inflight(first, i) == 1,  # type: ignore[misc]
                    f"router-a to see router-b's request on {instance_id}",
                    WAIT_TIMEOUT_S,
                )
            # Several snapshots later, still once each: in telemetry's shares, in the other
            # router's view, and in the placing router's own (its ledger, not also its share).
            await asyncio.sleep(0.3)
            snapshot, _, shares = await anext(found.telemetry_client.watch_with_shares())
            for instance_id in ("prefill-0", "decode-0"):
                assert inflight(first, instance_id) == 1
                assert inflight(second, instance_id) == 1
                # Telemetry lists the share apart; the state is what the engine reported.
                state = snapshot.instance(instance_id)
                assert state is not None and state.inflight_requests == 0
            assert {(s.router_id, s.instance_id, s.inflight_requests) for s in shares} == {
                ("router-b", "prefill-0", 1),
                ("router-b", "decode-0", 1),
            }
            # Arrivals too: router-a's rate on decode-0 is router-b's one request.
            state = first.cluster.view_of("decode-0")
            assert state is not None and state.arrival_rate_rps > 0

            await stream.aclose()
            await wait_for(
                lambda: inflight(first, "decode-0") == 0 and inflight(first, "prefill-0") == 0,
                "router-b's ended request to leave router-a's view",
                WAIT_TIMEOUT_S,
            )


async def test_a_dead_routers_share_expires() -> None:
    async with rig(report_interval_ms=600_000.0) as found:
        router = await found.started_router(router_id="router-a")
        # A router that reported one pending placement and then died (never renews it).
        await found.telemetry_client.report_placements(
            [], router_id="router-gone", pending=[PendingPlacement("decode-0", 300, None)]
        )
        await wait_for(
            lambda: inflight(router, "decode-0") == 1, "the share to show", WAIT_TIMEOUT_S
        )
        state = router.cluster.view_of("decode-0")
        assert state is not None and state.inflight_tokens == 300
        await wait_for(
            lambda: inflight(router, "decode-0") == 0,
            f"the dead router's share to expire after {SHARE_TTL_S} s",
            WAIT_TIMEOUT_S,
        )


async def test_telemetry_refuses_a_share_without_a_router_id() -> None:
    async with rig() as found:
        with pytest.raises(Exception, match="router_id"):
            await found.telemetry_client.report_placements(
                [], pending=[PendingPlacement("decode-0", 1, None)]
            )


# ---- the SIGTERM drain -------------------------------------------------------------------


async def test_sigterm_drains_grpc_and_http_streams_and_refuses_new_requests() -> None:
    async with rig(speedup=20.0) as found:
        router = found.router(
            router_id="router-a",
            shutdown_grace_s=60.0,
            http_listen_address=f"127.0.0.1:{free_port()}",
        )
        serving = asyncio.create_task(serve_until_signal(router, "router"))
        await wait_for(lambda: router.http_url is not None, "the router to serve", WAIT_TIMEOUT_S)
        await wait_for(
            lambda: router.cluster.placeable(), "the router to see the engines", WAIT_TIMEOUT_S
        )
        address, http_url = router.address, router.http_url
        assert http_url is not None
        tokens = 400
        async with (
            VoltanaClient(address, max_attempts=1) as client,
            aiohttp.ClientSession() as s,
            create_channel(address, security=SECURITY) as channel,
        ):
            health = health_pb2_grpc.HealthStub(channel).Watch(
                health_pb2.HealthCheckRequest(service=ROUTER_SERVICE)
            )
            assert (await health.read()).status == health_pb2.HealthCheckResponse.SERVING
            grpc_stream = client.generate("a story", max_new_tokens=tokens, ignore_eos=True)
            await first_token(grpc_stream)
            http_response = await s.post(
                f"{http_url}/v1/completions",
                json={"prompt": "a story", "max_tokens": tokens, "stream": True,
                      "ignore_eos": True},
            )  # fmt: skip
            assert http_response.status == 200
            await http_response.content.readline()  # its first event is out

            os.kill(os.getpid(), signal.SIGTERM)
            # Health says NOT_SERVING first (load balancers, SDK health watches move on).
            said = await asyncio.wait_for(health.read(), WAIT_TIMEOUT_S)
            assert said.status == health_pb2.HealthCheckResponse.NOT_SERVING
            # New requests: refused at both doors.
            with pytest.raises(UnavailableError):
                await client.generate("late", max_new_tokens=4, stream=False)
            with pytest.raises(aiohttp.ClientConnectionError):
                async with s.post(f"{http_url}/v1/completions", json={"prompt": "late"}):
                    pass
            # The running ones finish, every token.
            summary = await read_to_end(grpc_stream)
            assert summary.completion_tokens == tokens
            body = (await http_response.read()).decode()
            events = [json.loads(line[6:]) for line in body.splitlines() if line[6:7] == "{"]
            assert events and events[-1]["choices"][0]["finish_reason"] == "length"
            await asyncio.wait_for(serving, WAIT_TIMEOUT_S)

        oks = [c for c in found.store.completions if c.ok]
        assert len(oks) == 2 and all(c.output_tokens == tokens for c in oks)


# ---- the SDK fails over ------------------------------------------------------------------


async def test_sdk_fails_over_to_a_second_router_and_retries_only_before_streaming() -> None:
    async with rig(speedup=20.0) as found:
        first = await found.started_router(router_id="router-a", shutdown_grace_s=0.2)
        second = await found.started_router(router_id="router-b")
        dead = f"127.0.0.1:{free_port()}"

        # A target nobody listens on: the request goes to the live one.
        async with VoltanaClient([dead, second.address]) as client:
            for _ in range(3):
                result = await client.generate("hi", max_new_tokens=4, stream=False)
                assert result.summary.completion_tokens == 4
        assert requests_served(second) == 3

        async with VoltanaClient([first.address, second.address], timeout_s=30.0) as client:
            # A stream that has begun on router-a is never sent again: router-a stopping
            # past its drain fails it, with a status, and router-b never sees it.
            before = requests_served(second)
            streaming = None
            for _ in range(4):  # round-robin: one of the first two lands on router-a
                stream = client.generate("a long story", max_new_tokens=16_000)
                await first_token(stream)
                if first.servicer is not None and first.servicer.in_flight == 1:
                    streaming = stream
                    break
                await stream.aclose()
            assert streaming is not None
            await wait_for(lambda: requests_served(second) >= before, "router-b to settle")
            before = requests_served(second)
            stopping = asyncio.create_task(first.stop())
            with pytest.raises(UnavailableError, match="router shut down"):
                await read_to_end(streaming)
            await stopping
            assert requests_served(second) == before

            # router-a is gone: every new request is served by router-b at once.
            started = time.monotonic()
            for _ in range(4):
                result = await client.generate("hi", max_new_tokens=4, stream=False)
                assert result.summary.completion_tokens == 4
            assert requests_served(second) == before + 4
            assert time.monotonic() - started < WAIT_TIMEOUT_S


async def test_sdk_does_not_retry_what_a_router_took_and_failed() -> None:
    async with rig() as found:
        router = await found.started_router(router_id="router-a")
        await found.telemetry_client.unregister_instance("decode-0")
        await wait_for(lambda: not router.cluster.placeable(), "decode-0 to be gone")
        async with VoltanaClient(router.address) as client:
            with pytest.raises(UnavailableError) as raised:
                await client.generate("hi", max_new_tokens=4, stream=False)
        assert raised.value.code == grpc.StatusCode.UNAVAILABLE
        assert requests_served(router) == 1  # one try: the router answered it


class StallingEngine:
    """An SGLang-like /generate of our own. Prefill: answers at once. Decode: streams
    ``tokens`` tokens, then holds the stream (no finish reason yet) for ``stall_s``."""

    def __init__(self, phase: Phase, *, tokens: int = 0, stall_s: float = 0.0) -> None:
        self.phase = phase
        self.tokens = tokens
        self.stall_s = stall_s
        self.runner: aiohttp.web.AppRunner | None = None
        self.url = ""

    async def __aenter__(self) -> StallingEngine:
        app = aiohttp.web.Application()
        app.router.add_post("/generate", self._generate)
        self.runner = aiohttp.web.AppRunner(app)
        await self.runner.setup()
        port = free_port()
        await aiohttp.web.TCPSite(self.runner, "127.0.0.1", port).start()
        self.url = f"http://127.0.0.1:{port}"
        return self

    async def __aexit__(self, *_: object) -> None:
        if self.runner is not None:
            await self.runner.cleanup()

    async def _generate(self, request: aiohttp.web.Request) -> aiohttp.web.StreamResponse:
        await request.json()
        response = aiohttp.web.StreamResponse(headers={"Content-Type": "text/event-stream"})
        await response.prepare(request)

        async def send(chunk: dict[str, Any]) -> None:
            await response.write(f"data: {json.dumps(chunk)}\n\n".encode())

        if self.phase is Phase.PREFILL:
            await send({"text": "", "meta_info": {"prompt_tokens": 3}})
        else:
            for index in range(self.tokens):
                # SGLang streams the text so far, not each chunk's own.
                text = "x" * (index + 1)
                await send({"text": text, "meta_info": {"completion_tokens": index + 1}})
            await asyncio.sleep(self.stall_s)
            meta = {"completion_tokens": self.tokens, "finish_reason": {"type": "length"}}
            await send({"text": "x" * self.tokens, "meta_info": meta})
        await response.write(b"data: [DONE]\n\n")
        return response


async def test_the_drain_running_out_never_fails_a_stream_that_sent_its_last_token() -> None:
    tokens = 5
    async with (
        contextlib.AsyncExitStack() as stack,
        StallingEngine(Phase.PREFILL) as prefill,
        StallingEngine(Phase.DECODE, tokens=tokens, stall_s=2.0) as decode,
    ):
        store = RecordingStore()
        telemetry = await stack.enter_async_context(
            TelemetryService(
                TelemetrySettings(watch_min_interval_ms=20, security=SECURITY), store=store
            )
        )
        client = await stack.enter_async_context(
            TelemetryClient(telemetry.address, security=SECURITY)
        )
        for phase, engine in ((Phase.PREFILL, prefill), (Phase.DECODE, decode)):
            await client.register_instance(info_for(f"{phase.value}-0", phase, engine.url, 1))
        found = Rig(store, telemetry, client, stack)
        found.engines = {"prefill-0": None, "decode-0": None}  # type: ignore[dict-item]
        router = await found.started_router(shutdown_grace_s=0.2)
        async with VoltanaClient(router.address, max_attempts=1) as sdk:
            stream = sdk.generate("hi", max_new_tokens=tokens)
            received = 0
            while received < tokens:  # every token is out; the engine holds the end back
                event = await anext(stream)
                assert isinstance(event, TokenEvent), (received, event)
                # The router relays what one read brought as one event (tokens coalesce); each
                # of this engine's tokens is one "x".
                received += len(event.token_ids) or len(event.text)
            stopping = asyncio.create_task(router.stop())
            summary = await read_to_end(stream)  # the drain (0.2 s) ran out meanwhile
            await stopping
        assert summary.completion_tokens == tokens
        (record,) = store.completions
        assert record.ok and record.output_tokens == tokens
