"""Command-line flags for logging and tracing, shared by `voltana up` and `voltana serve`."""

from __future__ import annotations

import argparse
from dataclasses import dataclass

from voltana.observability.logs import LEVEL_NAMES, configure_logging, parse_level
from voltana.observability.tracing import (
    EXPORTER_NAMES,
    TracingHandle,
    configure_tracing,
    resolve_exporter_name,
)


@dataclass(frozen=True)
class ObservabilityOptions:
    log_level: str = "INFO"
    log_json: bool = False
    # None = $OTEL_TRACES_EXPORTER or "none".
    otel_exporter: str | None = None
    # None = $OTEL_EXPORTER_OTLP_TRACES_ENDPOINT / $OTEL_EXPORTER_OTLP_ENDPOINT / localhost:4317.
    otel_endpoint: str | None = None
    service_name: str = "voltana"

    def check(self) -> None:
        """Raise ConfigError for an unknown level or exporter (before anything starts)."""
        parse_level(self.log_level)
        resolve_exporter_name(self.otel_exporter)

    def apply(self, *, set_global: bool = True) -> TracingHandle:
        """Configure logging and tracing for this process; shut the handle down at exit.

        ``set_global=False`` installs no global tracer provider: the caller hands out
        per-service ones (``TracingHandle.provider_for``).
        """
        self.check()
        configure_logging(self.log_level, json=self.log_json)
        return configure_tracing(
            self.otel_exporter, self.otel_endpoint, self.service_name, set_global=set_global
        )


def add_observability_args(parser: argparse.ArgumentParser) -> None:
    group = parser.add_argument_group("logging and tracing")
    group.add_argument(
        "--log-level",
        type=str.upper,
        choices=LEVEL_NAMES,
        default="INFO",
        help="log level (default: %(default)s)",
    )
    group.add_argument("--log-json", action="store_true", help="log JSON lines instead of text")
    group.add_argument(
        "--otel-exporter",
        choices=EXPORTER_NAMES,
        help="where trace spans go (default: $OTEL_TRACES_EXPORTER or none)",
    )
    group.add_argument(
        "--otel-endpoint",
        metavar="URL",
        help="OTLP/gRPC collector, e.g. http://jaeger:4317 "
        "(default: $OTEL_EXPORTER_OTLP_ENDPOINT or localhost:4317)",
    )
    group.add_argument(
        "--otel-service-name",
        metavar="NAME",
        help="service.name of the spans (default: per command)",
    )


def observability_from_args(
    args: argparse.Namespace, default_service_name: str
) -> ObservabilityOptions:
    return ObservabilityOptions(
        log_level=args.log_level,
        log_json=args.log_json,
        otel_exporter=args.otel_exporter,
        otel_endpoint=args.otel_endpoint,
        service_name=args.otel_service_name or default_service_name,
    )
