"""One simulated instance: its scheduler, clock, power and energy accounting, and what it
reports (through the observation contract, as a live engine would)."""

from __future__ import annotations

from dataclasses import dataclass, field

from voltana.batching.scheduling import (
    DecodeScheduler,
    PrefillScheduler,
    decode_gauges,
    prefill_gauges,
    unified_gauges,
)
from voltana.contract.state import InstanceState, Phase
from voltana.energy import EnergyLedger, WorkShares
from voltana.observation import InstanceObserver
from voltana.perf.model import PerformanceModel
from voltana.sim.cluster import ClusterConfig

# Service states (energy-aware elasticity; without a planner every instance stays serving).
SERVING = "serving"  # the router places on it
DRAINING = "draining"  # the router no longer places on it; its requests finish
STOPPED = "stopped"  # engine off, no CUDA context
STARTING = "starting"  # the engine is loading; serving once its start time has passed
SERVICE_STATES = (SERVING, DRAINING, STARTING, STOPPED)


@dataclass
class InstanceSeries:
    """Per-instance samples for plots: one row every `sample_interval_s`."""

    time_s: list[float] = field(default_factory=list)
    sm_clock_mhz: list[int] = field(default_factory=list)
    power_w: list[float] = field(default_factory=list)  # average since the previous sample
    queue_len: list[int] = field(default_factory=list)
    running_batch: list[int] = field(default_factory=list)
    state: list[str] = field(default_factory=list)  # service state at the sample


class SimInstance:
    def __init__(
        self,
        index: int,
        instance_id: str,
        phase: Phase,
        perf: PerformanceModel,
        config: ClusterConfig,
    ) -> None:
        self.index = index
        self.instance_id = instance_id
        self.phase = phase
        self.perf = perf
        self.gpus = config.gpus_per_instance
        self.prefill: PrefillScheduler[int] | None = None
        self.decode: DecodeScheduler[int] | None = None
        # A colocated (unified) instance runs both schedulers on one GPU, one pass at a time.
        if phase is not Phase.DECODE:
            self.prefill = PrefillScheduler(perf, token_budget=config.chunked_prefill_tokens)
        if phase is not Phase.PREFILL:
            self.decode = DecodeScheduler(perf, max_running_requests=config.max_running_requests)
        # Unified: when the decode batch's last token came out (None: no batch was running),
        # so that a token's gap counts the prefill passes run in between, as clients see it.
        self.decode_gap_from_s: float | None = None
        self.observer = InstanceObserver(phase, perf.gpu.key, config.observation)
        self.sm_clock_mhz = config.gpu.default_sm_clock_mhz
        self.target_clock_mhz = self.sm_clock_mhz
        self.pending_clock: tuple[float, int] | None = None  # (effective at, MHz)
        self.power_w = perf.idle_power_w(self.sm_clock_mhz)
        self.power_since_s = 0.0
        self.energy_j = 0.0
        self.sample_energy_j = 0.0
        self.clock_changes = 0
        # Clock residency: seconds and energy per clock, booked whenever the clock changes.
        self.residency_s: dict[int, float] = {}
        self.energy_j_by_clock: dict[int, float] = {}
        self._clock_since_s = 0.0
        self._clock_since_energy_j = 0.0
        self.busy = False
        # Energy per request (voltana.energy): the running iteration's work, request -> weight.
        self.ledger: EnergyLedger[int] = EnergyLedger()
        self.work: WorkShares[int] | None = None
        self.work_batch_version = -1  # the decode batch ``work`` was built for
        # The running iteration: when its current pace began, when it ends, which event ends it
        # (a clock change re-estimates it from the scheduler's running iteration).
        self.pace_since_s = 0.0
        self.iteration_end_s = 0.0
        self.completion_seq = -1
        self.jitter_factor = 1.0
        self.last_activity_s = 0.0
        self.series = InstanceSeries()
        # Elasticity: the service state, requests placed on it and not yet done with it, and
        # seconds and energy per state (booked at every change of state).
        self.state = SERVING
        self.assigned = 0
        self.time_s_by_state: dict[str, float] = {}
        self.energy_j_by_state: dict[str, float] = {}
        self._state_since_s = 0.0
        self._state_since_energy_j = 0.0

    # ---- energy and clocks ----------------------------------------------------------------
    def advance(self, now_s: float) -> None:
        """Integrate energy up to ``now_s``, applying a pending clock change on the way."""
        pending = self.pending_clock
        if pending is not None and pending[0] <= now_s:
            effective_s, clock_mhz = pending
            self._integrate(effective_s)
            self.book_residency(effective_s)
            self.sm_clock_mhz = clock_mhz
            self.pending_clock = None
            if not self.busy:  # an idle GPU's draw follows its clock at once
                self.power_w = self.perf.idle_power_w(clock_mhz)
        if now_s > self.power_since_s:  # (it is called often with nothing to add)
            self._integrate(now_s)

    def start(self, start_s: float) -> None:
        """The run begins at ``start_s``: energy and residency count from there."""
        self.power_since_s = start_s
        self.last_activity_s = start_s
        self._clock_since_s = start_s
        self._state_since_s = start_s

    def set_state(self, now_s: float, state: str) -> None:
        """Enter service state ``state`` at ``now_s`` (energy integrated and booked first)."""
        self.advance(now_s)
        self.book_state(now_s)
        self.state = state

    def book_state(self, now_s: float) -> None:
        """Book the time and energy in the current service state up to ``now_s`` (integrated)."""
        state = self.state
        self.time_s_by_state[state] = (
            self.time_s_by_state.get(state, 0.0) + now_s - self._state_since_s
        )
        self.energy_j_by_state[state] = (
            self.energy_j_by_state.get(state, 0.0) + self.energy_j - self._state_since_energy_j
        )
        self._state_since_s = now_s
        self._state_since_energy_j = self.energy_j

    def book_residency(self, now_s: float) -> None:
        """Book the time and energy at the current clock up to ``now_s`` (integrated)."""
        clock_mhz = self.sm_clock_mhz
        self.residency_s[clock_mhz] = (
            self.residency_s.get(clock_mhz, 0.0) + now_s - self._clock_since_s
        )
        self.energy_j_by_clock[clock_mhz] = (
            self.energy_j_by_clock.get(clock_mhz, 0.0) + self.energy_j - self._clock_since_energy_j
        )
        self._clock_since_s = now_s
        self._clock_since_energy_j = self.energy_j

    def _integrate(self, now_s: float) -> None:
        if now_s > self.power_since_s:
            energy_j = self.power_w * self.gpus * (now_s - self.power_since_s)
            self.energy_j += energy_j
            self.ledger.charge(energy_j, self.work if self.busy else None)
            self.power_since_s = now_s

    def request_clock(self, effective_s: float, clock_mhz: int) -> bool:
        """Lock ``clock_mhz`` from ``effective_s`` on; True when that changes the target (the
        caller schedules the change's effect)."""
        if clock_mhz == self.target_clock_mhz:
            return False
        self.target_clock_mhz = clock_mhz
        self.clock_changes += 1
        self.pending_clock = (effective_s, clock_mhz)
        return True

    def set_power(self, now_s: float, power_w: float) -> None:
        self._integrate(now_s)
        self.power_w = power_w

    # ---- observation ----------------------------------------------------------------------
    def observe(
        self, now_s: float, arrival_rate_rps: float = 0.0, arrival_tokens_per_s: float = 0.0
    ) -> InstanceState:
        """What the engine reports now (and telemetry adds the router's arrival counts to)."""
        if self.prefill is not None and self.decode is not None:
            gauges = unified_gauges(self.prefill, self.decode, now_s)
        elif self.prefill is not None:
            gauges = prefill_gauges(self.prefill, now_s, self.perf.kv_capacity_tokens())
        else:
            assert self.decode is not None
            gauges = decode_gauges(self.decode, now_s)
        return self.observer.observe(
            self.instance_id,
            now_s,
            gauges,
            sm_clock_mhz=self.sm_clock_mhz,
            power_w=self.power_w,
            energy_j=self.energy_j,
            last_activity_s=self.last_activity_s,
            arrival_rate_rps=arrival_rate_rps,
            arrival_tokens_per_s=arrival_tokens_per_s,
        )

    def sample(self, now_s: float, interval_s: float) -> None:
        self.advance(now_s)
        series = self.series
        energy = self.energy_j - self.sample_energy_j
        self.sample_energy_j = self.energy_j
        series.time_s.append(now_s)
        series.state.append(self.state)
        series.sm_clock_mhz.append(self.sm_clock_mhz)
        series.power_w.append(energy / (interval_s * self.gpus) if interval_s > 0 else 0.0)
        if self.decode is not None:  # decode and unified: the prompt queue, then the batch
            waiting = self.prefill.queue_len if self.prefill is not None else 0
            series.queue_len.append(waiting + self.decode.queue_len)
            series.running_batch.append(self.decode.batch_size)
        else:
            assert self.prefill is not None
            series.queue_len.append(self.prefill.queue_len)
            series.running_batch.append(
                len(self.prefill.running.chunks) if self.prefill.running else 0
            )
