"""OpenTelemetry tracing: a TracerProvider with one exporter, chosen by name.

``none`` records nothing (the services' tracers stay no-ops), ``console`` prints finished spans
as JSON on stderr (stdout stays for command output), ``otlp`` ships them over OTLP/gRPC to a
collector or Jaeger (``endpoint``, or the standard ``OTEL_EXPORTER_OTLP_TRACES_ENDPOINT`` /
``OTEL_EXPORTER_OTLP_ENDPOINT`` variables, or localhost:4317). The default exporter name comes from ``OTEL_TRACES_EXPORTER``.

Several services in one process (``voltana up``) each get their own TracerProvider from
``TracingHandle.provider_for`` so their spans carry their own ``service.name``; the providers
share one span processor, so there is still one exporter (one batch thread, one connection).
"""

from __future__ import annotations

import os
import sys
from collections.abc import Mapping
from dataclasses import dataclass, field

from opentelemetry import trace
from opentelemetry.sdk.resources import SERVICE_INSTANCE_ID, SERVICE_NAME, Resource
from opentelemetry.sdk.trace import TracerProvider
from opentelemetry.sdk.trace.export import (
    BatchSpanProcessor,
    ConsoleSpanExporter,
    SimpleSpanProcessor,
    SpanExporter,
    SpanProcessor,
)

from voltana.errors import ConfigError

EXPORTER_NAMES = ("none", "console", "otlp")
EXPORTER_ENV = "OTEL_TRACES_EXPORTER"


def resolve_exporter_name(name: str | None, environ: Mapping[str, str] | None = None) -> str:
    """``name``, else ``$OTEL_TRACES_EXPORTER``, else ``none``; checked against EXPORTER_NAMES."""
    env = os.environ if environ is None else environ
    chosen = (name or env.get(EXPORTER_ENV) or "none").strip().lower()
    if chosen not in EXPORTER_NAMES:
        raise ConfigError(
            f"unknown OpenTelemetry exporter {chosen!r}; valid: {', '.join(EXPORTER_NAMES)}"
        )
    return chosen


@dataclass
class TracingHandle:
    """What ``configure_tracing`` set up. ``provider`` is None for the ``none`` exporter."""

    exporter: str
    provider: TracerProvider | None
    installed_globally: bool
    # The processor every provider of this handle exports through (None when tracing is off).
    processor: SpanProcessor | None = None
    _service_providers: list[TracerProvider] = field(default_factory=list, repr=False)

    def tracer(self, name: str) -> trace.Tracer:
        """A tracer from this provider (a no-op tracer when tracing is off)."""
        if self.provider is None:
            return trace.NoOpTracer()
        return self.provider.get_tracer(name)

    def provider_for(
        self, service_name: str, instance_id: str | None = None
    ) -> trace.TracerProvider:
        """A provider for one in-process service: its spans carry ``service.name`` (and
        ``service.instance.id``) of their own and go out through this handle's exporter.

        A no-op provider when tracing is off.
        """
        if self.processor is None:
            return trace.NoOpTracerProvider()
        attributes = {SERVICE_NAME: service_name}
        if instance_id:
            attributes[SERVICE_INSTANCE_ID] = instance_id
        provider = TracerProvider(resource=Resource.create(attributes))
        provider.add_span_processor(self.processor)
        self._service_providers.append(provider)
        return provider

    def force_flush(self, timeout_ms: int = 30_000) -> bool:
        """Export every finished span now; False when the exporter did not finish in time."""
        return self.processor.force_flush(timeout_ms) if self.processor is not None else True

    def shutdown(self) -> None:
        """Export what is still buffered, then stop the exporter (call once, at exit)."""
        if self.provider is not None:
            self.provider.shutdown()  # shuts the shared processor down once
        elif self.processor is not None:
            self.processor.shutdown()


def _otlp_exporter(endpoint: str | None) -> SpanExporter:
    # Imported here: only a process that exports over OTLP pays for loading it.
    from opentelemetry.exporter.otlp.proto.grpc.trace_exporter import OTLPSpanExporter

    # endpoint=None lets the exporter read OTEL_EXPORTER_OTLP_[TRACES_]ENDPOINT itself.
    return OTLPSpanExporter(endpoint=endpoint)


def configure_tracing(
    exporter: str | None = None,
    endpoint: str | None = None,
    service_name: str = "voltana",
    *,
    span_exporter: SpanExporter | None = None,
    batch: bool = True,
    set_global: bool = True,
) -> TracingHandle:
    """Build a TracerProvider for ``service_name`` exporting through ``exporter``.

    ``span_exporter`` overrides the named exporter (tests pass an InMemorySpanExporter).
    ``batch=False`` exports each span as it ends (SimpleSpanProcessor) instead of in batches.
    With ``set_global`` the provider becomes OpenTelemetry's global one, which is what the
    services use unless handed a tracer; OpenTelemetry allows that once per process, so a
    second global configuration raises ConfigError.
    """
    name = "custom" if span_exporter is not None else resolve_exporter_name(exporter)
    if name == "none":
        return TracingHandle("none", None, installed_globally=False)
    if span_exporter is None:
        span_exporter = (
            ConsoleSpanExporter(out=sys.stderr) if name == "console" else _otlp_exporter(endpoint)
        )
    provider = TracerProvider(resource=Resource.create({SERVICE_NAME: service_name}))
    processor: SpanProcessor = (
        BatchSpanProcessor(span_exporter) if batch else SimpleSpanProcessor(span_exporter)
    )
    provider.add_span_processor(processor)
    if set_global:
        if isinstance(trace.get_tracer_provider(), TracerProvider):
            provider.shutdown()
            raise ConfigError("OpenTelemetry tracing is already configured in this process")
        trace.set_tracer_provider(provider)
    return TracingHandle(name, provider, installed_globally=set_global, processor=processor)
