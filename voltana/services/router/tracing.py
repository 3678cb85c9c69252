"""OpenTelemetry helpers of the router (API only: exporters are the deployment's choice).

The server span of each call is the gRPC (or HTTP) instrumentation's; the router adds its
``placement`` and ``dispatch`` children. They are started with explicit parents instead of
being made "current": a Generate handler is an async generator, and a context attached before
a ``yield`` may be detached elsewhere.
"""

from __future__ import annotations

from opentelemetry import context as otel_context
from opentelemetry import trace

from voltana.contract.state import Placement

TRACER_NAME = "voltana.services.router"


def child_of(span: trace.Span) -> otel_context.Context:
    return trace.set_span_in_context(span)


def set_placement_attributes(span: trace.Span, placement: Placement, policy_name: str) -> None:
    span.set_attribute("voltana.policy", policy_name)
    span.set_attribute("voltana.prefill_instance", placement.prefill_id)
    span.set_attribute("voltana.decode_instance", placement.decode_id)
    span.set_attribute("voltana.placement.reason", placement.reason)
    optional = {
        "voltana.placement.predicted_ttft_ms": placement.predicted_ttft_ms,
        "voltana.placement.predicted_itl_ms": placement.predicted_itl_ms,
        "voltana.placement.prefill_clock_mhz": placement.prefill_clock_mhz,
        "voltana.placement.decode_clock_mhz": placement.decode_clock_mhz,
    }
    for name, value in optional.items():
        if value is not None:
            span.set_attribute(name, value)


def mark_failed(span: trace.Span, error: BaseException, description: str | None = None) -> None:
    span.record_exception(error)
    span.set_status(trace.Status(trace.StatusCode.ERROR, description or str(error)))
