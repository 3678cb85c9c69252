"""Logging and OpenTelemetry tracing setup for Voltana's long-running commands.

Nothing is configured at import time: a command calls ``configure_logging`` and
``configure_tracing`` once, from its settings or flags (``add_observability_args``).
"""

from voltana.observability.args import (
    ObservabilityOptions,
    add_observability_args,
    observability_from_args,
)
from voltana.observability.logs import LogFormatter, configure_logging
from voltana.observability.tracing import (
    EXPORTER_NAMES,
    TracingHandle,
    configure_tracing,
    resolve_exporter_name,
)

__all__ = [
    "EXPORTER_NAMES",
    "LogFormatter",
    "ObservabilityOptions",
    "TracingHandle",
    "add_observability_args",
    "configure_logging",
    "configure_tracing",
    "observability_from_args",
    "resolve_exporter_name",
]
