"""The controller's Prometheus metrics: decisions and clock changes by reason, targets, leases.

One ``ControllerMetrics`` per controller, on the controller's own registry; the control loop
reports each decision, each SetClocks (applied or failed) and each lease renewal to it.
Clocks are exported in hertz, the Prometheus base unit (MHz x 1e6).
"""

from __future__ import annotations

import contextlib
from collections.abc import Callable, Iterator, Mapping

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from voltana.contract.state import ClockDecision, Phase

_HZ_PER_MHZ = 1e6
SET_CLOCKS_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0)


class _PolicyInfo(Collector):
    """``voltana_controller_policy_info{phase, policy} 1``, read at scrape time (SetPolicy
    changes it at run time)."""

    def __init__(self, policy_names: Callable[[], Mapping[Phase, str]]) -> None:
        self._policy_names = policy_names

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "voltana_controller_policy_info",
            "Policy in force per phase (value 1).",
            labels=["phase", "policy"],
        )
        for phase, name in sorted(self._policy_names().items(), key=lambda item: item[0].value):
            family.add_metric([phase.value, name], 1.0)
        yield family


class ControllerMetrics:
    def __init__(
        self, registry: CollectorRegistry, policy_names: Callable[[], Mapping[Phase, str]]
    ) -> None:
        self.registry = registry
        registry.register(_PolicyInfo(policy_names))
        self.decisions = Counter(
            "voltana_controller_decisions",
            "Clock decisions of the frequency policies, by instance, phase and reason.",
            ["instance_id", "phase", "reason"],
            registry=registry,
        )
        self.clock_changes = Counter(
            "voltana_controller_clock_changes",
            "SetClocks calls to node agents, by instance, phase, reason and result.",
            ["instance_id", "phase", "reason", "result"],
            registry=registry,
        )
        self.target_clock = Gauge(
            "voltana_controller_target_sm_clock_hertz",
            "SM clock the policy wants for each instance.",
            ["instance_id", "phase"],
            registry=registry,
        )
        self.applied_clock = Gauge(
            "voltana_controller_applied_sm_clock_hertz",
            "SM clock the instance's agent last confirmed.",
            ["instance_id", "phase"],
            registry=registry,
        )
        self.set_clocks_duration = Histogram(
            "voltana_controller_set_clocks_duration_seconds",
            "Time of one SetClocks call to a node agent (read-back included).",
            buckets=SET_CLOCKS_BUCKETS_S,
            registry=registry,
        )
        self.lease_renewals = Counter(
            "voltana_controller_lease_renewals",
            "Lease renewals on node agents, by result (renewed, lost, failed).",
            ["result"],
            registry=registry,
        )

    def on_decision(self, instance_id: str, phase: Phase, decision: ClockDecision) -> None:
        self.decisions.labels(instance_id, phase.value, decision.reason or "-").inc()
        self.target_clock.labels(instance_id, phase.value).set(decision.sm_clock_mhz * _HZ_PER_MHZ)

    def on_clock_change(
        self,
        instance_id: str,
        phase: Phase,
        decision: ClockDecision,
        *,
        applied_mhz: int | None,
        duration_s: float,
    ) -> None:
        """One SetClocks ended: ``applied_mhz`` is what the agent applied (None: it failed)."""
        result = "failed" if applied_mhz is None else "applied"
        self.clock_changes.labels(instance_id, phase.value, decision.reason or "-", result).inc()
        self.set_clocks_duration.observe(duration_s)
        if applied_mhz is not None:
            self.applied_clock.labels(instance_id, phase.value).set(applied_mhz * _HZ_PER_MHZ)

    def on_renewal(self, result: str) -> None:
        self.lease_renewals.labels(result).inc()

    def forget(self, instance_id: str, phase: Phase) -> None:
        """The instance left: drop its gauges (counters stay, as Prometheus expects)."""
        for gauge in (self.target_clock, self.applied_clock):
            with contextlib.suppress(KeyError):  # never set
                gauge.remove(instance_id, phase.value)
