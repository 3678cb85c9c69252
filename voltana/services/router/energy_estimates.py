"""Energy per request where the engines report none (real SGLang): the router's estimate.

Simulated engines attribute their GPU's energy to each request themselves and say so in the
last chunk; real SGLang does not. For those requests the router runs the estimator of
``voltana.energy_observed`` per instance, on what it sees anyway: each instance's energy counter
in the telemetry snapshots (node agents sample NVML) and its own requests' dispatch, first token
and token arrivals. All times are the router's monotonic clock.
"""

from __future__ import annotations

import time
from collections.abc import Callable

from voltana.contract.state import ClusterSnapshot
from voltana.energy import RequestEnergy
from voltana.energy_observed import ObservedEnergy


class EnergyEstimates:
    """One estimator per instance of the latest snapshot; single event loop, no locks."""

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._instances: dict[str, ObservedEnergy[str]] = {}
        self._counters_j: dict[str, float] = {}

    def update(self, snapshot: ClusterSnapshot) -> None:
        """Counter readings from a snapshot: only a counter that moved is a new reading (the
        same value again is the same NVML sample, seen in a later snapshot)."""
        now_s = self._clock()
        present = set()
        for state in snapshot.states():
            present.add(state.instance_id)
            # 0: no GPU sample for the instance (no agent), not a reading.
            if state.energy_j <= 0 or self._counters_j.get(state.instance_id) == state.energy_j:
                continue
            self._counters_j[state.instance_id] = state.energy_j
            self._instance(state.instance_id).reading(now_s, state.energy_j)
        for gone in set(self._instances) - present:
            del self._instances[gone]
            self._counters_j.pop(gone, None)

    def dispatched(self, request_id: str, prefill_id: str, prompt_tokens: int) -> None:
        self._instance(prefill_id).prefill_started(request_id, self._clock(), prompt_tokens)

    def first_token(self, request_id: str, prefill_id: str) -> None:
        self._instance(prefill_id).prefill_ended(request_id, self._clock())

    def tokens(self, request_id: str, decode_id: str, count: int) -> None:
        self._instance(decode_id).tokens(request_id, count)

    def finished(self, request_id: str, instance_ids: tuple[str, ...]) -> RequestEnergy | None:
        """The request's estimate, summed over its instances (forgotten here); None when an
        instance has no measured energy yet (no agent samples it, or not for long enough)."""
        now_s = self._clock()
        total: RequestEnergy | None = RequestEnergy()
        for instance_id in dict.fromkeys(instance_ids):  # PD on one instance: once
            estimator = self._instances.get(instance_id)
            energy = estimator.finish(request_id, now_s) if estimator is not None else None
            if energy is None or estimator is None or not estimator.measuring:
                total = None
            elif total is not None:
                total = total + energy
        return total

    def _instance(self, instance_id: str) -> ObservedEnergy[str]:
        estimator = self._instances.get(instance_id)
        if estimator is None:
            estimator = self._instances[instance_id] = ObservedEnergy()
        return estimator
