"""The router's Prometheus metrics: requests by status, placements, latencies, SLO attainment.

One ``RouterMetrics`` per router, on the router's own registry. The request path reports to it
through ``RequestMetrics`` (one per request), so the servicer only marks the moments: placed,
tokens arrived, finished. Latencies are observed in seconds (Prometheus base unit); SLO
attainment is two counters (judged and met, per target) whose ratio of rates is the
attainment over any window: ``rate(voltana_router_slo_met_requests_total[1m]) /
rate(voltana_router_slo_judged_requests_total[1m])``.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram, Info

from voltana.contract.state import Placement, SloTarget

if TYPE_CHECKING:
    from voltana.services.router.cluster import LiveCluster
    from voltana.services.router.reporting import CompletionReporter

# Buckets in seconds: TTFT spans queueing bursts, ITL is tens of ms, e2e whole generations.
TTFT_BUCKETS_S = (0.01, 0.025, 0.05, 0.1, 0.2, 0.4, 0.8, 1.6, 3.2, 6.4, 12.8, 30.0, 60.0)
ITL_BUCKETS_S = (0.002, 0.005, 0.01, 0.02, 0.03, 0.05, 0.075, 0.1, 0.2, 0.5, 1.0, 2.0)
E2E_BUCKETS_S = (0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 20.0, 40.0, 80.0, 160.0, 320.0, 600.0)
ENERGY_BUCKETS_J = (1.0, 5.0, 10.0, 25.0, 50.0, 100.0, 250.0, 500.0, 1000.0, 2500.0, 5000.0)
SLO_TARGETS = ("ttft", "itl", "joint")
OK_STATUS = "OK"


class RouterMetrics:
    """Every metric of one router, registered on ``registry``."""

    def __init__(self, registry: CollectorRegistry, *, policy: str, router: str) -> None:
        self.registry = registry
        info = Info("voltana_router", "The router's operating policy.", registry=registry)
        info.info({"policy": policy, "router": router})
        self.requests = Counter(
            "voltana_router_requests",
            "Requests that ended, by protocol and status (gRPC status code name).",
            ["protocol", "status"],
            registry=registry,
        )
        self.in_flight = Gauge(
            "voltana_router_requests_in_flight",
            "Requests being served now.",
            ["protocol"],
            registry=registry,
        )
        self.http_connections_shed = Counter(
            "voltana_router_http_connections_shed",
            "HTTP connections the front door's limits closed, by reason: idle (sent nothing), "
            "slow_headers, slow_body (answered 408), over_cap (429: too many from one address).",
            ["reason"],
            registry=registry,
        )
        self.placements = Counter(
            "voltana_router_placements",
            "Placement decisions, by routing policy and its reason.",
            ["policy", "reason"],
            registry=registry,
        )
        self.instance_placements = Counter(
            "voltana_router_instance_placements",
            "Requests placed on each instance.",
            ["instance_id", "phase"],
            registry=registry,
        )
        self.ttft = Histogram(
            "voltana_router_time_to_first_token_seconds",
            "Router arrival to first output token.",
            buckets=TTFT_BUCKETS_S,
            registry=registry,
        )
        self.itl = Histogram(
            "voltana_router_inter_token_latency_seconds",
            "Gap between consecutive output tokens (per token).",
            buckets=ITL_BUCKETS_S,
            registry=registry,
        )
        self.e2e = Histogram(
            "voltana_router_e2e_request_latency_seconds",
            "Router arrival to the last token of successful requests.",
            buckets=E2E_BUCKETS_S,
            registry=registry,
        )
        self.slo_judged = Counter(
            "voltana_router_slo_judged_requests",
            "Placed requests judged against their SLO (failed ones miss it).",
            registry=registry,
        )
        self.slo_met = Counter(
            "voltana_router_slo_met_requests",
            "Requests meeting their SLO target: ttft, itl (mean ITL) or joint (both).",
            ["target"],
            registry=registry,
        )
        self.prompt_tokens = Counter(
            "voltana_router_prompt_tokens",
            "Prompt tokens of placed requests.",
            registry=registry,
        )
        self.generation_tokens = Counter(
            "voltana_router_generation_tokens",
            "Output tokens relayed to clients.",
            registry=registry,
        )
        self.request_energy = Histogram(
            "voltana_router_request_energy_joules",
            "GPU energy attributed to each completed request (active plus its idle share).",
            buckets=ENERGY_BUCKETS_J,
            registry=registry,
        )
        self.attributed_energy = Counter(
            "voltana_router_attributed_energy_joules",
            "GPU energy attributed to completed requests, by kind (active or idle share).",
            ["kind"],
            registry=registry,
        )
        self.snapshot_age = Gauge(
            "voltana_router_snapshot_age_seconds",
            "Seconds since the last cluster snapshot from telemetry arrived (-1 before one).",
            registry=registry,
        )
        self.snapshot_stale = Gauge(
            "voltana_router_snapshot_stale",
            "1 while the last snapshot is older than snapshot_stale_after_s (telemetry "
            "unreachable; requests are placed on it all the same), else 0.",
            registry=registry,
        )
        self.completion_reports_pending = Gauge(
            "voltana_router_completion_reports_pending",
            "Request records buffered for telemetry, not yet taken by it.",
            registry=registry,
        )
        self.completion_reports_dropped = Counter(
            "voltana_router_completion_reports_dropped",
            "Request records a full buffer dropped before telemetry took them.",
            registry=registry,
        )
        for target in SLO_TARGETS:  # every series exists from the first scrape on
            self.slo_met.labels(target)
        for kind in ("active", "idle"):
            self.attributed_energy.labels(kind)
        for reason in ("idle", "slow_headers", "slow_body", "over_cap"):
            self.http_connections_shed.labels(reason)
        self.slo_judged.inc(0)

    def on_http_connection_shed(self, reason: str) -> None:
        self.http_connections_shed.labels(reason).inc()

    def watch_telemetry(self, cluster: LiveCluster, reporter: CompletionReporter) -> None:
        """Read the snapshot's age and the buffered records at each scrape."""

        def age_s() -> float:
            age = cluster.snapshot_age_s
            return -1.0 if age is None else age

        self.snapshot_age.set_function(age_s)
        self.snapshot_stale.set_function(lambda: float(cluster.snapshot_stale))
        self.completion_reports_pending.set_function(lambda: float(reporter.pending))

    def request(self, protocol: str) -> RequestMetrics:
        """Start observing one request (counts it in flight until ``finish``)."""
        self.in_flight.labels(protocol).inc()
        return RequestMetrics(self, protocol)


@dataclass
class RequestMetrics:
    """One request's observations; ``finish`` exactly once."""

    metrics: RouterMetrics
    protocol: str
    placed: bool = False
    finished: bool = False
    _last_token_s: float | None = field(default=None, repr=False)

    def on_placed(self, placement: Placement, policy: str, prompt_tokens: int) -> None:
        metrics = self.metrics
        self.placed = True
        metrics.placements.labels(policy, placement.reason or "-").inc()
        if placement.is_unified:
            metrics.instance_placements.labels(placement.prefill_id, "unified").inc()
        else:
            metrics.instance_placements.labels(placement.prefill_id, "prefill").inc()
            metrics.instance_placements.labels(placement.decode_id, "decode").inc()
        metrics.prompt_tokens.inc(prompt_tokens)

    def on_tokens(self, count: int, at_s: float, ttft_s: float | None) -> None:
        """``count`` tokens arrived at ``at_s`` (monotonic s); ``ttft_s`` on the first ones."""
        metrics = self.metrics
        metrics.generation_tokens.inc(count)
        if self._last_token_s is None:
            if ttft_s is not None:
                metrics.ttft.observe(ttft_s)
            gaps, gap_s = count - 1, 0.0  # tokens that came with the first one
        else:
            gaps, gap_s = count, (at_s - self._last_token_s) / max(1, count)
        for _ in range(gaps):
            metrics.itl.observe(gap_s)
        self._last_token_s = at_s

    def on_energy(self, active_j: float, idle_j: float) -> None:
        metrics = self.metrics
        metrics.request_energy.observe(active_j + idle_j)
        metrics.attributed_energy.labels("active").inc(active_j)
        metrics.attributed_energy.labels("idle").inc(idle_j)

    def finish(
        self,
        status: str,
        *,
        slo: SloTarget,
        ttft_ms: float | None,
        mean_itl_ms: float | None,
        e2e_s: float | None,
    ) -> None:
        """The request ended with ``status`` (gRPC code name; "OK" on success)."""
        if self.finished:
            return
        self.finished = True
        metrics = self.metrics
        metrics.in_flight.labels(self.protocol).dec()
        metrics.requests.labels(self.protocol, status).inc()
        if status == OK_STATUS and e2e_s is not None:
            metrics.e2e.observe(e2e_s)
        if not self.placed:
            return  # rejected before placement: not judged against an SLO
        metrics.slo_judged.inc()
        ok = status == OK_STATUS
        ttft_met = ok and ttft_ms is not None and ttft_ms <= slo.ttft_ms
        itl_met = ok and (mean_itl_ms is None or mean_itl_ms <= slo.itl_ms)
        if ttft_met:
            metrics.slo_met.labels("ttft").inc()
        if itl_met:
            metrics.slo_met.labels("itl").inc()
        if ttft_met and itl_met:
            metrics.slo_met.labels("joint").inc()
