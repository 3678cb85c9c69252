"""Telemetry service: latest state per instance, time series and rolling windows.

Stores (``MemoryTelemetryStore``, ``RedisTelemetryStore``) implement ``TelemetryStore``;
``TelemetryService`` serves one over gRPC (voltana.v1.TelemetryService) and
``TelemetryClient`` is how other services talk to it.
"""

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
    GpuRef,
    InstanceInfo,
    Metric,
    ReportResult,
    SeriesPoint,
    WindowReport,
)
from voltana.services.telemetry.redis_store import RedisTelemetryStore
from voltana.services.telemetry.service import TelemetryService, build_store
from voltana.services.telemetry.settings import TelemetrySettings
from voltana.services.telemetry.store import (
    ChangeNotifier,
    TelemetryStore,
    build_snapshot,
    snapshot_of,
)

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
