"""Telemetry's Prometheus metrics: how long store operations take and how often they fail.

``InstrumentedStore`` wraps any ``TelemetryStore`` (memory or Redis) and times every coroutine
method call, so a slow Redis shows up as ``voltana_telemetry_store_operation_duration_seconds``
and a failing one as ``voltana_telemetry_store_errors_total``, per operation. The histogram's
``_count`` per operation also counts what was stored: ``put_gpu_sample`` (GPU samples),
``put_instance_state`` (load reports), ``record_completion`` (request completions).
``voltana_telemetry_quarantined_records_total`` counts bad records read back from Redis
(quarantine.py), ``voltana_telemetry_repaired_records_total`` those the upkeep repaired.
"""

from __future__ import annotations

import functools
import inspect
import time
from collections.abc import Callable
from typing import Any, cast

from prometheus_client import CollectorRegistry, Counter, Histogram

from voltana.services.telemetry.quarantine import BadRecord
from voltana.services.telemetry.store import TelemetryStore

STORE_BUCKETS_S = (0.0001, 0.00025, 0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.5)


class TelemetryMetrics:
    def __init__(self, registry: CollectorRegistry, store_kind: str) -> None:
        self.registry = registry
        self.store_kind = store_kind
        self.store_duration = Histogram(
            "voltana_telemetry_store_operation_duration_seconds",
            "Time of one store operation, by store (memory, redis) and operation.",
            ["store", "operation"],
            buckets=STORE_BUCKETS_S,
            registry=registry,
        )
        self.store_errors = Counter(
            "voltana_telemetry_store_errors",
            "Store operations that raised, by store, operation and error type.",
            ["store", "operation", "error"],
            registry=registry,
        )

        self.quarantined = Counter(
            "voltana_telemetry_quarantined_records",
            "Records read back from the store that could not be used (skipped until repaired), "
            "by kind of key (docs/resilience.md).",
            ["kind"],
            registry=registry,
        )
        self.repaired = Counter(
            "voltana_telemetry_repaired_records",
            "Quarantined records the upkeep repaired or dropped, by kind of key.",
            ["kind"],
            registry=registry,
        )

    def count_quarantined(self, record: BadRecord) -> None:
        self.quarantined.labels(record.kind.value).inc()

    def count_repaired(self, record: BadRecord) -> None:
        self.repaired.labels(record.kind.value).inc()

    def observe(self, operation: str, duration_s: float, error: BaseException | None) -> None:
        self.store_duration.labels(self.store_kind, operation).observe(duration_s)
        if error is not None:
            self.store_errors.labels(self.store_kind, operation, type(error).__name__).inc()


class InstrumentedStore:
    """A ``TelemetryStore`` that times every coroutine method of the store it wraps.

    Delegates attribute by attribute, so it follows the store interface as it grows.
    """

    def __init__(self, store: TelemetryStore, metrics: TelemetryMetrics) -> None:
        self._store = store
        self._metrics = metrics

    @property
    def wrapped(self) -> TelemetryStore:
        return self._store

    def __getattr__(self, name: str) -> Any:
        attribute = getattr(self._store, name)
        if not inspect.iscoroutinefunction(attribute):
            return attribute
        return self._timed(name, attribute)

    def _timed(self, operation: str, method: Callable[..., Any]) -> Callable[..., Any]:
        metrics = self._metrics

        @functools.wraps(method)
        async def timed(*args: Any, **kwargs: Any) -> Any:
            started_s = time.perf_counter()
            try:
                result = await method(*args, **kwargs)
            except Exception as error:
                metrics.observe(operation, time.perf_counter() - started_s, error)
                raise
            metrics.observe(operation, time.perf_counter() - started_s, None)
            return result

        return timed


def instrumented(store: TelemetryStore, metrics: TelemetryMetrics) -> TelemetryStore:
    """``store`` with its operations timed into ``metrics`` (same interface)."""
    return cast(TelemetryStore, InstrumentedStore(store, metrics))
