"""The node agent's Prometheus metrics: per GPU its SM clock, power, energy counter and lease.

Read at scrape time from what the agent already knows — the sampler's latest reading of each
GPU and the clock manager's leases — so a scrape never calls NVML. Labels: ``gpu_index``,
``instance_id`` (the serving instance bound to the GPU, "" when none) and ``gpu`` (the catalog
key). The energy counter is NVML's total-energy counter (since driver load), so it is a
Prometheus counter: ``rate(voltana_gpu_energy_joules_total[1m])`` is the average power.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping

from prometheus_client.core import CounterMetricFamily, GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

from voltana.gpu import GpuSample
from voltana.services.agent.leases import Lease

_HZ_PER_MHZ = 1e6
LABELS = ["gpu_index", "instance_id", "gpu"]

LeaseState = Callable[[int], tuple[Lease | None, int | None]]


class AgentCollector(Collector):
    """Yields the GPU metrics of one agent (see the module docstring)."""

    def __init__(
        self,
        *,
        latest_samples: Callable[[], Mapping[int, GpuSample]],
        lease_state: LeaseState,
        gpu_indices: Callable[[], list[int]],
        instance_ids_by_gpu: Mapping[int, str],
        gpu_keys: Callable[[], Mapping[int, str]],
        now_s: Callable[[], float],
        unix_s: Callable[[float], float],
    ) -> None:
        self._latest_samples = latest_samples
        self._lease_state = lease_state
        self._gpu_indices = gpu_indices
        self._instance_ids = dict(instance_ids_by_gpu)
        self._gpu_keys = gpu_keys
        self._now_s = now_s
        self._unix_s = unix_s

    def collect(self) -> Iterator[Metric]:
        clock = GaugeMetricFamily(
            "voltana_gpu_sm_clock_hertz", "SM clock of the GPU (last sample).", labels=LABELS
        )
        power = GaugeMetricFamily(
            "voltana_gpu_power_watts", "Power draw of the GPU (last sample).", labels=LABELS
        )
        energy = CounterMetricFamily(
            "voltana_gpu_energy_joules",
            "Energy the GPU used since its driver loaded (last sample).",
            labels=LABELS,
        )
        locked = GaugeMetricFamily(
            "voltana_gpu_locked_sm_clock_hertz",
            "Clock the GPU is locked to (absent at default clocks).",
            labels=LABELS,
        )
        lease = GaugeMetricFamily(
            "voltana_gpu_clock_lease_info",
            "Holder of the GPU's clock lease (value 1; absent when nobody holds a live one).",
            labels=[*LABELS, "holder"],
        )
        lease_expiry = GaugeMetricFamily(
            "voltana_gpu_clock_lease_expiry_timestamp_seconds",
            "When the live clock lease of the GPU expires (Unix time).",
            labels=[*LABELS, "holder"],
        )
        samples = self._latest_samples()
        keys = self._gpu_keys()
        now_s = self._now_s()
        for index in self._gpu_indices():
            values = [str(index), self._instance_ids.get(index, ""), keys.get(index, "")]
            sample = samples.get(index)
            if sample is not None:
                clock.add_metric(values, sample.sm_clock_mhz * _HZ_PER_MHZ)
                power.add_metric(values, sample.power_w)
                energy.add_metric(values, sample.energy_j)
            held, locked_mhz = self._lease_state(index)
            if locked_mhz is not None:
                locked.add_metric(values, locked_mhz * _HZ_PER_MHZ)
            if held is not None and held.is_live(now_s):
                lease.add_metric([*values, held.holder], 1.0)
                lease_expiry.add_metric([*values, held.holder], self._unix_s(held.expires_at_s))
        yield from (clock, power, energy, locked, lease, lease_expiry)
