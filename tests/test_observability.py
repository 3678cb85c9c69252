"""Logging format and OpenTelemetry setup, and traces across the running stack."""

from __future__ import annotations

import asyncio
import io
import json
import logging
import re
from collections.abc import Iterator
from dataclasses import dataclass

import openai
import pytest
from conftest import OtlpSink, ReceivedSpan
from opentelemetry import propagate, trace
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import ConsoleSpanExporter
from opentelemetry.sdk.trace.export.in_memory_span_exporter import InMemorySpanExporter

from voltana.errors import ConfigError
from voltana.observability import (
    ObservabilityOptions,
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


# ---- traces across the stack, as an OTLP collector receives them -------------------------------

SERVER, CLIENT, INTERNAL = 2, 3, 1  # OTLP span kinds
GENERATE = "voltana.v1.RouterService/Generate"
# HTTP attributes of the older semantic conventions, which the stable ones replaced.
OLD_HTTP_ATTRIBUTES = {"http.method", "http.url", "http.status_code", "http.scheme", "http.host"}
OLD_HTTP_ATTRIBUTES |= {"http.target", "http.flavor", "http.user_agent", "http.server_name"}
OLD_NET_ATTRIBUTES = {"net.peer.ip", "net.peer.name", "net.peer.port", "net.host.name"}
OLD_HTTP_ATTRIBUTES |= OLD_NET_ATTRIBUTES | {"net.host.port"}


@dataclass
class TracedRun:
    spans: list[ReceivedSpan]
    request_trace_id: str
    openai_trace_id: str

    def named(self, name: str, kind: int | None = None) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.name == name and (kind is None or s.kind == kind)]

    def one(self, name: str, kind: int | None = None, **where: str) -> ReceivedSpan:
        found = [
            s
            for s in self.named(name, kind)
            if all(getattr(s, key) == value for key, value in where.items())
        ]
        assert len(found) == 1, (name, kind, where, found)
        return found[0]

    def trace(self, trace_id: str) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.trace_id == trace_id]

    def children(self, parent: ReceivedSpan) -> list[ReceivedSpan]:
        return [s for s in self.spans if s.parent_span_id == parent.span_id]


@pytest.fixture(scope="module")
def traced_run(otlp_sink: OtlpSink) -> Iterator[TracedRun]:
    """One request through the SDK into a whole stack whose every service exports over OTLP
    with its own service.name; clock changes and lease renewals happen meanwhile."""
    handle = configure_tracing("otlp", endpoint=otlp_sink.endpoint, set_global=False)
    settings = SimStackSettings(
        prefill=1,
        decode=1,
        policy="voltana-paper",
        speedup=10.0,
        report_interval_ms=100.0,
        sample_interval_ms=100,
        snapshot_interval_ms=50,
        drain_timeout_s=0.5,
        lease_ttl_ms=600,  # renewals every 200 ms: several during the run
        http_port=0,
    )
    client_provider = handle.provider_for("test-client")

    async def run() -> tuple[str, str]:
        async with SimStack(settings, tracer_providers=handle.provider_for) as stack:
            tracer = client_provider.get_tracer("tests")
            with tracer.start_as_current_span("test.request") as root:
                async with VoltanaClient(
                    stack.router_address, tracer_provider=client_provider
                ) as client:
                    result = await client.generate(
                        input_ids=list(range(200, 264)), max_new_tokens=8, stream=False
                    )
            assert result.summary.completion_tokens == 8
            # The same through the OpenAI client and the router's HTTP front door; the
            # client's trace context travels as a W3C traceparent header.
            with tracer.start_as_current_span("test.openai_request") as openai_root:
                headers: dict[str, str] = {}
                propagate.inject(headers)
                async with openai.AsyncOpenAI(
                    base_url=stack.addresses["router.http"] + "/v1", api_key="unused"
                ) as openai_client:
                    chat = await openai_client.chat.completions.create(
                        model="llama-3.1-8b",
                        messages=[{"role": "user", "content": "Hello"}],
                        max_tokens=8,
                        extra_headers=headers,
                    )
            assert chat.usage is not None and chat.usage.completion_tokens == 8
            await asyncio.sleep(1.0)  # clock changes and lease renewals
        return (
            format(root.get_span_context().trace_id, "032x"),
            format(openai_root.get_span_context().trace_id, "032x"),
        )

    try:
        trace_id, openai_trace_id = asyncio.run(run())
        assert handle.force_flush(10_000)
        yield TracedRun(otlp_sink.spans, trace_id, openai_trace_id)
    finally:
        handle.shutdown()


@pytest.mark.e2e
def test_an_sdk_request_is_one_trace_from_client_through_router_to_both_engines(
    traced_run: TracedRun,
) -> None:
    run = traced_run
    trace_id = run.request_trace_id
    in_trace = run.trace(trace_id)
    assert {"test-client", "voltana-router", "voltana-engine"} <= {s.service_name for s in in_trace}
    engines = {s.service_instance_id for s in in_trace if s.service_name == "voltana-engine"}
    assert engines == {"prefill-0", "decode-0"}
    root = run.one("test.request")
    sdk = run.one("voltana.client.generate")
    call = run.one(GENERATE, CLIENT)
    served = run.one(GENERATE, SERVER)
    for span in (root, sdk, call, served):
        assert span.trace_id == trace_id, span.name
    assert sdk.parent_span_id == root.span_id
    assert call.parent_span_id == sdk.span_id and call.service_name == "test-client"
    assert served.parent_span_id == call.span_id and served.service_name == "voltana-router"
    dispatch = run.one("dispatch", trace_id=trace_id)
    assert run.one("placement", trace_id=trace_id).parent_span_id == served.span_id
    assert dispatch.parent_span_id == served.span_id
    # The router's two engine calls, each continued by its engine's server span.
    engine_calls = [s for s in run.children(dispatch) if s.kind == CLIENT]
    assert len(engine_calls) == 2
    engine_servers = {
        s.service_instance_id: s
        for call_span in engine_calls
        for s in run.children(call_span)
        if s.kind == SERVER
    }
    assert set(engine_servers) == {"prefill-0", "decode-0"}
    for server_span in engine_servers.values():
        assert server_span.name == "POST /generate" and server_span.trace_id == trace_id
    # Each engine's own spans, inside the request's server span there.
    prefill_stage = run.one("sglang.prefill", trace_id=trace_id)
    assert prefill_stage.parent_span_id == engine_servers["prefill-0"].span_id
    decode_stages = {s.name for s in run.children(engine_servers["decode-0"])}
    assert {"sglang.kv_transfer", "sglang.decode"} <= decode_stages
    # The decode's KV fetch from the prefill's bootstrap server is traced too.
    kv_wait = run.one("sglang.kv_transfer", trace_id=trace_id)
    (kv_fetch,) = [s for s in run.children(kv_wait) if s.kind == CLIENT]
    (bootstrap,) = run.children(kv_fetch)
    assert bootstrap.service_instance_id == "prefill-0" and bootstrap.trace_id == trace_id
    assert dict(prefill_stage.attributes)["gen_ai.usage.input_tokens"] == 64
    assert (
        dict(run.one("sglang.decode", trace_id=trace_id).attributes)["gen_ai.usage.output_tokens"]
        == 8
    )


@pytest.mark.e2e
def test_an_openai_client_request_is_one_trace_through_the_http_front_door(
    traced_run: TracedRun,
) -> None:
    run = traced_run
    in_trace = run.trace(run.openai_trace_id)
    root = run.one("test.openai_request")
    (served,) = [s for s in run.children(root) if s.kind == SERVER]
    assert served.name == "POST /v1/chat/completions" and served.service_name == "voltana-router"
    assert served.attributes["http.route"] == "/v1/chat/completions"
    assert served.attributes["voltana.completion_tokens"] == 8
    (dispatch,) = [s for s in run.children(served) if s.name == "dispatch"]
    engine_calls = [s for s in run.children(dispatch) if s.kind == CLIENT]
    engines = {
        s.service_instance_id for c in engine_calls for s in run.children(c) if s.kind == SERVER
    }
    assert engines == {"prefill-0", "decode-0"}
    assert {"sglang.prefill", "sglang.kv_transfer", "sglang.decode"} <= {s.name for s in in_trace}
    assert all(s.trace_id == run.openai_trace_id for s in (served, dispatch, *engine_calls))


@pytest.mark.e2e
def test_every_rpc_and_http_span_has_semantic_convention_attributes(
    traced_run: TracedRun,
) -> None:
    remote = [s for s in traced_run.spans if s.kind in (SERVER, CLIENT)]
    assert remote
    for span in remote:
        attributes = span.attributes
        assert "server.address" in attributes, span
        if attributes.get("rpc.system") == "grpc":
            service, method = span.name.split("/")
            assert not span.name.startswith("/")
            assert attributes["rpc.service"] == service and attributes["rpc.method"] == method
            assert attributes["rpc.grpc.status_code"] == 0, span
            assert not set(attributes) & OLD_NET_ATTRIBUTES, span
            if span.kind == SERVER:
                assert attributes["client.address"] and attributes["client.port"], span
        else:
            # The stable HTTP conventions only: none of the older names beside them.
            assert "http.request.method" in attributes, span
            assert attributes["http.response.status_code"], span
            assert not set(attributes) & OLD_HTTP_ATTRIBUTES, span
            route = attributes["http.route" if span.kind == SERVER else "url.template"]
            assert span.name == f"{attributes['http.request.method']} {route}", span
    served = traced_run.one(GENERATE, SERVER)
    assert served.attributes["server.port"] and served.attributes["client.address"] == "127.0.0.1"
    router_call = next(
        s
        for s in traced_run.children(
            traced_run.one("dispatch", trace_id=traced_run.request_trace_id)
        )
        if s.kind == CLIENT
    )
    assert router_call.attributes["http.request.method"] == "POST"
    assert str(router_call.attributes["url.full"]).endswith("/generate")
    assert router_call.name == "POST /generate"


@pytest.mark.e2e
def test_clock_changes_are_a_controller_client_and_agent_server_pair(
    traced_run: TracedRun,
) -> None:
    run = traced_run
    changes = run.named("voltana.controller.clock_change")
    assert changes
    for change in changes:
        assert change.service_name == "voltana-controller"
        if change.parent_span_id:
            # A change a placement notice asked for belongs to that request's trace.
            (notice,) = [s for s in run.spans if s.span_id == change.parent_span_id]
            assert notice.name == "voltana.v1.ControllerService/NotifyPlacement"
            assert notice.kind == SERVER and notice.service_name == "voltana-controller"
        (call,) = run.children(change)
        assert call.name == "voltana.v1.NodeAgentService/SetClocks" and call.kind == CLIENT
        assert call.service_name == "voltana-controller"
        (served,) = run.children(call)
        assert served.kind == SERVER and served.service_name == "voltana-agent"
        assert served.name == call.name
        (applied,) = run.children(served)
        assert applied.name == "voltana.agent.set_clocks"
        assert (
            applied.attributes["voltana.gpu.sm_clock.applied_mhz"]
            == (change.attributes["voltana.gpu.sm_clock.target_mhz"])
        )


@pytest.mark.e2e
def test_background_calls_start_no_traces_and_services_have_their_own_names(
    traced_run: TracedRun,
) -> None:
    run = traced_run
    roots = {s.name for s in run.spans if s.parent_span_id == ""}
    # Requests, clock changes and the clock resets at start and stop; nothing periodic.
    assert {"test.request", "voltana.controller.clock_change"} <= roots
    assert roots <= {
        "test.request",
        "test.openai_request",
        "voltana.controller.clock_change",
        "voltana.v1.NodeAgentService/ResetClocks",
        "voltana.agent.reset_clocks",
    }
    # Lease renewals happened (every 200 ms) but left no span at all.
    assert not [s for s in run.spans if "RenewLease" in s.name or "renew_lease" in s.name]
    assert not [s for s in run.spans if s.name.startswith("voltana.v1.TelemetryService/")]
    assert {s.service_name for s in run.spans} == {
        "test-client",
        "voltana-router",
        "voltana-controller",
        "voltana-agent",
        "voltana-engine",
    }
