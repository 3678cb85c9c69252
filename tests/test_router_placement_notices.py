"""Placement notices off the request's path: which placements wait for the controller
(``may_be_parked``), and how queued notices are coalesced (a fake ControllerService of our own
on a real gRPC server on loopback, answering when the test lets it)."""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import replace
from typing import Any

import grpc.aio
import pytest
from opentelemetry import context as otel_context
from opentelemetry import trace
from opentelemetry.trace import NonRecordingSpan, SpanContext, TraceFlags
from security_helpers import SECURITY

from voltana.contract.state import InstanceState, Phase
from voltana.hardware import get_gpu
from voltana.services.router.placements import ControllerTrigger, may_be_parked
from voltana.v1 import controller_pb2, controller_pb2_grpc

MAX_MHZ = get_gpu("a100-80g").max_sm_clock_mhz
IDLE = InstanceState("prefill-0", Phase.PREFILL, "a100-80g", MAX_MHZ)


@pytest.mark.unit
@pytest.mark.parametrize(
    ("state", "parked"),
    [
        (IDLE, False),  # idle, but already at the highest clock: nothing to raise
        (replace(IDLE, sm_clock_mhz=210), True),  # idle and lowered: may be parked
        (replace(IDLE, sm_clock_mhz=0), True),  # clock unknown
        (replace(IDLE, gpu_key="unknown-gpu"), True),  # GPU unknown
        (replace(IDLE, sm_clock_mhz=210, queue_len=1), False),  # busy: clocked for work
        (replace(IDLE, sm_clock_mhz=210, running_batch=3), False),
        (replace(IDLE, sm_clock_mhz=210, running_prefill_tokens=512), False),
        (replace(IDLE, sm_clock_mhz=210, inflight_requests=1), False),  # placed on already
    ],
)
def test_only_an_idle_instance_below_its_highest_clock_may_be_parked(
    state: InstanceState, parked: bool
) -> None:
    assert may_be_parked(state) is parked


class GatedController(controller_pb2_grpc.ControllerServiceServicer):
    """Records each notice's instances; answers only while ``open`` is set."""

    def __init__(self) -> None:
        self.notices: list[list[tuple[str, int]]] = []
        self.traceparents: list[str] = []
        self.received = asyncio.Event()
        self.open = asyncio.Event()

    async def NotifyPlacement(
        self, request: controller_pb2.NotifyPlacementRequest, context: Any
    ) -> controller_pb2.NotifyPlacementResponse:
        self.notices.append([(s.instance_id, s.inflight_requests) for s in request.instances])
        metadata = dict(context.invocation_metadata() or ())
        self.traceparents.append(str(metadata.get("traceparent", "")))
        self.received.set()
        await self.open.wait()
        return controller_pb2.NotifyPlacementResponse()


@pytest.fixture
async def controller() -> AsyncIterator[tuple[GatedController, str]]:
    server = grpc.aio.server()
    fake = GatedController()
    controller_pb2_grpc.add_ControllerServiceServicer_to_server(fake, server)
    port = server.add_insecure_port("127.0.0.1:0")
    await server.start()
    try:
        yield fake, f"127.0.0.1:{port}"
    finally:
        fake.open.set()
        await server.stop(0)


def request_trace(trace_id: int) -> otel_context.Context:
    span_context = SpanContext(
        trace_id, 0xABC, is_remote=False, trace_flags=TraceFlags(TraceFlags.SAMPLED)
    )
    return trace.set_span_in_context(NonRecordingSpan(span_context))


async def until(condition: Any, timeout_s: float = 10.0) -> None:
    async with asyncio.timeout(timeout_s):
        while not condition():
            await asyncio.sleep(0.005)


@pytest.mark.integration
async def test_queued_notices_coalesce_and_show_the_view_when_sent(
    controller: tuple[GatedController, str],
) -> None:
    fake, address = controller
    inflight = {"p0": 1, "p1": 1, "d0": 1, "d1": 1}

    def view_of(instance_id: str) -> InstanceState:
        phase = Phase.PREFILL if instance_id.startswith("p") else Phase.DECODE
        return InstanceState(
            instance_id, phase, "a100-80g", MAX_MHZ, inflight_requests=inflight[instance_id]
        )

    trigger = ControllerTrigger(address, timeout_s=10.0, security=SECURITY, view_of=view_of)
    trigger.start()
    try:
        trigger.notify(["p0", "d0"], request_trace(1))  # never blocks: the sender takes it
        await until(lambda: len(fake.notices) == 1)
        # While that notice is unanswered, three more placements: they wait, merged.
        trigger.notify(["p0", "d1"], request_trace(2))
        trigger.notify(["p1", "d0"], request_trace(3))
        trigger.notify(["p0", "d0"])
        inflight.update(p0=3, d0=2)
        await asyncio.sleep(0.05)
        assert len(fake.notices) == 1
        fake.open.set()
        await until(lambda: len(fake.notices) == 2)
        await until(lambda: trigger.sent == 2)
        assert fake.notices == [
            [("p0", 1), ("d0", 1)],
            # One notice for all three, each instance once, as the router sees it when sent.
            [("p0", 3), ("d1", 1), ("p1", 1), ("d0", 2)],
        ]
        # Each notice carries the trace of the first request it covers (W3C traceparent).
        assert [t.split("-")[1] for t in fake.traceparents] == [f"{1:032x}", f"{2:032x}"]
        assert trigger.failed == 0
    finally:
        await trigger.close()


@pytest.mark.integration
async def test_a_waited_notice_returns_with_the_answer_and_a_silent_one_times_out(
    controller: tuple[GatedController, str],
) -> None:
    fake, address = controller

    def view_of(instance_id: str) -> InstanceState:
        return replace(IDLE, instance_id=instance_id, sm_clock_mhz=210)

    trigger = ControllerTrigger(address, timeout_s=0.3, security=SECURITY, view_of=view_of)
    trigger.start()
    try:
        waiting = asyncio.create_task(trigger.notify_and_wait(["p0", "d0"]))
        await until(lambda: len(fake.notices) == 1)
        await asyncio.sleep(0.05)
        assert not waiting.done()  # dispatch waits for the controller's answer...
        await waiting  # ...or its timeout: never longer, never an error for the request
        assert (trigger.sent, trigger.failed) == (0, 1)
        fake.open.set()
        await trigger.notify_and_wait(["p0"])
        assert (trigger.sent, trigger.failed) == (1, 1)
    finally:
        await trigger.close()
