"""Telemetry service: latest state per instance, time series and rolling windows.

Stores (``MemoryTelemetryStore``, ``RedisTelemetryStore``) implement ``TelemetryStore``;
``TelemetryService`` serves one over gRPC (voltana.v1.TelemetryService) and
``TelemetryClient`` is how other services talk to it.
"""

import importlib
from typing import TYPE_CHECKING, Any

from voltana.contract.instances import GpuRef, InstanceInfo
from voltana.services.telemetry.client import TelemetryClient
from voltana.services.telemetry.errors import (
    CorruptTelemetryError,
    InvalidTelemetryError,
    TelemetryError,
    TelemetryStoreError,
    UnknownInstanceError,
)
from voltana.services.telemetry.memory_store import MemoryTelemetryStore
from voltana.services.telemetry.records import (
    Aggregates,
    Completion,
    GpuReading,
    Metric,
    ReportResult,
    SeriesPoint,
    WindowReport,
)
from voltana.services.telemetry.store import (
    ChangeNotifier,
    TelemetryStore,
    build_snapshot,
    snapshot_of,
)

# The service, its settings and the Redis store load on first use: a process that only talks to
# telemetry (a router, an agent) starts without the Redis client and the server side.
_LAZY = {
    "RedisTelemetryStore": "voltana.services.telemetry.redis_store",
    "TelemetryService": "voltana.services.telemetry.service",
    "TelemetrySettings": "voltana.services.telemetry.settings",
    "build_store": "voltana.services.telemetry.service",
}

if TYPE_CHECKING:
    from voltana.services.telemetry.redis_store import RedisTelemetryStore
    from voltana.services.telemetry.service import TelemetryService, build_store
    from voltana.services.telemetry.settings import TelemetrySettings


def __getattr__(name: str) -> Any:
    module = _LAZY.get(name)
    if module is None:
        raise AttributeError(f"module {__name__!r} has no attribute {name!r}")
    value = getattr(importlib.import_module(module), name)
    globals()[name] = value
    return value


__all__ = [
    "Aggregates",
    "ChangeNotifier",
    "Completion",
    "CorruptTelemetryError",
    "GpuReading",
    "GpuRef",
    "InstanceInfo",
    "InvalidTelemetryError",
    "MemoryTelemetryStore",
    "Metric",
    "RedisTelemetryStore",
    "ReportResult",
    "SeriesPoint",
    "TelemetryClient",
    "TelemetryError",
    "TelemetryService",
    "TelemetrySettings",
    "TelemetryStore",
    "TelemetryStoreError",
    "UnknownInstanceError",
    "WindowReport",
    "build_snapshot",
    "build_store",
    "snapshot_of",
]
