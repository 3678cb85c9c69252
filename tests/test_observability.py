"""Logging format and OpenTelemetry setup, and traces across the running stack."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator

import pytest
from opentelemetry import trace
from opentelemetry.sdk.trace import ReadableSpan, TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from voltana.errors import ConfigError
from voltana.observability import (
    ObservabilityOptions,
    TracingHandle,
    configure_logging,
    configure_tracing,
    resolve_exporter_name,
)
from voltana.sdk import VoltanaClient
from voltana.stack import SimStack, SimStackSettings

TEXT_LINE = re.compile(
    r"^\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ (?P<level>[A-Z]+) (?P<logger>[\w.]+): (?P<rest>.*)$"
)


@pytest.fixture
def restore_root_logger() -> Iterator[None]:
    root = logging.getLogger()
    handlers, level = list(root.handlers), root.level
    yield
    root.handlers[:] = handlers
    root.setLevel(level)


@pytest.mark.unit
def test_text_lines_have_utc_time_level_logger_and_extra_fields(
    restore_root_logger: None,
) -> None:
    out = io.StringIO()
    configure_logging("info", stream=out)
    log = logging.getLogger("voltana.router")
    log.info("placed request", extra={"instance": "decode-0", "reason": "lowest clock"})
    log.debug("not shown")
    lines = out.getvalue().splitlines()
    assert len(lines) == 1
    match = TEXT_LINE.match(lines[0])
    assert match is not None, lines[0]
    assert match["level"] == "INFO" and match["logger"] == "voltana.router"
    assert match["rest"] == 'placed request instance=decode-0 reason="lowest clock"'


@pytest.mark.unit
def test_json_lines_and_reconfiguring_replaces_the_handler(restore_root_logger: None) -> None:
    first, second = io.StringIO(), io.StringIO()
    configure_logging("WARNING", stream=first)
    configure_logging("DEBUG", json=True, stream=second)
    try:
        raise ValueError("boom")
    except ValueError:
        logging.getLogger("voltana.agent").exception("clock change failed", extra={"gpu": 3})
    assert first.getvalue() == ""
    document = json.loads(second.getvalue().splitlines()[0])
    assert document["level"] == "ERROR"
    assert document["logger"] == "voltana.agent"
    assert document["message"] == "clock change failed"
    assert document["gpu"] == 3
    assert "ValueError: boom" in document["exception"]
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\dZ", document["ts"])


@pytest.mark.unit
def test_unknown_level_and_exporter_are_config_errors() -> None:
    with pytest.raises(ConfigError, match="log level"):
        configure_logging("chatty")
    with pytest.raises(ConfigError, match="exporter"):
        resolve_exporter_name("zipkin")
    with pytest.raises(ConfigError):
        ObservabilityOptions(otel_exporter="jaeger-thrift").check()


@pytest.mark.unit
def test_exporter_name_comes_from_flag_then_environment_then_none() -> None:
    assert resolve_exporter_name(None, {}) == "none"
    assert resolve_exporter_name(None, {"OTEL_TRACES_EXPORTER": "otlp"}) == "otlp"
    assert resolve_exporter_name("console", {"OTEL_TRACES_EXPORTER": "otlp"}) == "console"


@pytest.mark.unit
def test_tracing_none_console_and_otlp_providers() -> None:
    off = configure_tracing("none", set_global=False)
    assert off.provider is None
    assert isinstance(off.tracer("x"), trace.NoOpTracer)

    console = configure_tracing("console", service_name="voltana-test", set_global=False)
    assert isinstance(console.provider, TracerProvider)
    processor = console.provider._active_span_processor._span_processors[0]
    assert isinstance(processor.span_exporter, ConsoleSpanExporter)  # type: ignore[attr-defined]
    assert console.provider.resource.attributes["service.name"] == "voltana-test"
    console.shutdown()

    otlp = configure_tracing("otlp", endpoint="http://127.0.0.1:1", set_global=False)
    assert otlp.provider is not None
    exporter = otlp.provider._active_span_processor._span_processors[0].span_exporter  # type: ignore[attr-defined]
    assert type(exporter).__name__ == "OTLPSpanExporter"
    otlp.shutdown()


@pytest.mark.unit
def test_in_memory_exporter_records_spans_without_touching_the_global_provider() -> None:
    exporter = InMemorySpanExporter()
    handle = configure_tracing(span_exporter=exporter, batch=False, set_global=False)
    with handle.tracer("t").start_as_current_span("work"):
        pass
    assert [span.name for span in exporter.get_finished_spans()] == ["work"]
    assert trace.get_tracer_provider() is not handle.provider
    handle.shutdown()


# ---- traces across the stack -----------------------------------------------------------------


@pytest.fixture(scope="module")
def global_spans() -> Iterator[tuple[TracingHandle, InMemorySpanExporter]]:
    """The process-wide provider (the node agents only use the global one), set up once."""
    exporter = InMemorySpanExporter()
    handle = configure_tracing(
        span_exporter=exporter, batch=False, service_name="voltana-test", set_global=True
    )
    yield handle, exporter
    handle.shutdown()  # later tests' spans go nowhere


def _by_name(spans: tuple[ReadableSpan, ...], name: str) -> list[ReadableSpan]:
    return [span for span in spans if span.name == name]


async def _traced_stack_run(exporter: InMemorySpanExporter) -> tuple[ReadableSpan, ...]:
    exporter.clear()
    settings = SimStackSettings(
        prefill=1,
        decode=1,
        policy="voltana-paper",
        speedup=10.0,
        report_interval_ms=100.0,
        sample_interval_ms=100,
        snapshot_interval_ms=50,
        drain_timeout_s=0.5,
    )
    async with SimStack(settings) as stack:
        tracer = trace.get_tracer("tests")
        with tracer.start_as_current_span("test.request"):
            async with VoltanaClient(stack.router_address) as client:
                result = await client.generate(
                    input_ids=list(range(200, 264)), max_new_tokens=8, stream=False
                )
        assert result.summary.completion_tokens == 8
        # voltana-paper lowers the idle clocks soon after start.
        loop = asyncio.get_running_loop()
        deadline = loop.time() + 5.0
        while not _by_name(exporter.get_finished_spans(), "voltana.agent.set_clocks"):
            assert loop.time() < deadline, "no clock change span"
            await asyncio.sleep(0.02)
    return exporter.get_finished_spans()


@pytest.mark.e2e
async def test_a_routed_request_is_one_trace_from_sdk_to_router(
    global_spans: tuple[TracingHandle, InMemorySpanExporter],
) -> None:
    _, exporter = global_spans
    spans = await _traced_stack_run(exporter)
    (root,) = _by_name(spans, "test.request")
    (client_span,) = _by_name(spans, "voltana.client.generate")
    (generate,) = _by_name(spans, "router.generate")
    (placement,) = _by_name(spans, "placement")
    (dispatch,) = _by_name(spans, "dispatch")
    trace_id = root.context.trace_id
    for span in (client_span, generate, placement, dispatch):
        assert span.context.trace_id == trace_id, span.name
    # Parentage: SDK call → router (across gRPC) → placement and dispatch.
    assert generate.parent is not None and generate.parent.span_id == client_span.context.span_id
    assert placement.parent is not None and placement.parent.span_id == generate.context.span_id
    assert dispatch.parent is not None and dispatch.parent.span_id == generate.context.span_id
    # Completion: the router span carries how the request ended.
    assert generate.attributes is not None
    assert generate.attributes["voltana.finish_reason"] == "length"
    assert generate.attributes["voltana.completion_tokens"] == 8
    assert placement.attributes is not None and "voltana.decode_instance" in placement.attributes


@pytest.mark.e2e
async def test_controller_and_agent_record_clock_changes(
    global_spans: tuple[TracingHandle, InMemorySpanExporter],
) -> None:
    _, exporter = global_spans
    spans = await _traced_stack_run(exporter)
    changes = _by_name(spans, "voltana.controller.clock_change")
    applied = _by_name(spans, "voltana.agent.set_clocks")
    assert changes and applied
    targets = [
        dict(span.attributes or {}).get("voltana.gpu.sm_clock.target_mhz") for span in changes
    ]
    assert all(isinstance(mhz, int) and mhz > 0 for mhz in targets), targets


@pytest.mark.e2e
async def test_clock_change_trace_continues_from_controller_into_agent(
    global_spans: tuple[TracingHandle, InMemorySpanExporter],
) -> None:
    _, exporter = global_spans
    spans = await _traced_stack_run(exporter)
    controller_traces = {
        span.context.trace_id for span in _by_name(spans, "voltana.controller.clock_change")
    }
    agent_traces = {span.context.trace_id for span in _by_name(spans, "voltana.agent.set_clocks")}
    assert agent_traces and agent_traces <= controller_traces
