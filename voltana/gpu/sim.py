"""``GpuDevice`` for a simulated GPU: datasheet clocks, delayed clock changes, exact energy.

Time comes from an injected ``now_s`` (tests pass a fake clock; the live simulator passes a
scaled ``time.monotonic``). Power comes from an injected ``power_source(sm_clock_mhz) -> W`` that
the simulated engine swaps as its work changes; energy is integrated exactly, because power is
piecewise constant between clock changes and power-source swaps and we integrate across both.
"""

from __future__ import annotations

import threading
import time
from collections import deque
from collections.abc import Callable

from voltana.errors import ConfigError
from voltana.gpu.clocks import check_locked_range_mhz
from voltana.hardware.gpus import GpuSpec

PowerSource = Callable[[int], float]


class SimulatedGpu:
    """A ``GpuDevice`` whose clock, power and energy follow a ``GpuSpec``.

    Locking to [min, max] runs the GPU at ``max`` (a busy GPU boosts to the top of its lock
    range). Every change takes effect ``clock_change_delay_ms`` after the call, in call order.
    A lock serialises access, so asyncio tasks and worker threads may share one instance.
    """

    def __init__(
        self,
        spec: GpuSpec,
        index: int = 0,
        *,
        now_s: Callable[[], float] = time.monotonic,
        power_source: PowerSource | None = None,
        clock_change_delay_ms: float | None = None,
        uuid: str | None = None,
    ) -> None:
        delay_ms = (
            spec.clock_change_delay_ms
            if clock_change_delay_ms is None
            else float(clock_change_delay_ms)
        )
        if not delay_ms >= 0:
            raise ConfigError(f"clock change delay must be >= 0 ms, got {delay_ms}")
        self._spec = spec
        self._index = index
        self._uuid = uuid or f"GPU-sim-{spec.key}-{index}"
        self._now_s = now_s
        self._delay_s = delay_ms / 1000.0
        self._power_source: PowerSource = power_source or self._idle_power_w
        self._lock = threading.RLock()
        self._clock_mhz = spec.default_sm_clock_mhz
        self._locked_range_mhz: tuple[int, int] | None = None
        # (time it takes effect, new clock), oldest first.
        self._pending: deque[tuple[float, int]] = deque()
        self._energy_j = 0.0
        self._integrated_until_s = now_s()

    def _idle_power_w(self, sm_clock_mhz: int) -> float:
        return self._spec.idle_w

    @property
    def spec(self) -> GpuSpec:
        return self._spec

    @property
    def index(self) -> int:
        return self._index

    @property
    def name(self) -> str:
        return self._spec.display_name

    @property
    def uuid(self) -> str:
        return self._uuid

    @property
    def default_sm_clock_mhz(self) -> int:
        return self._spec.default_sm_clock_mhz

    @property
    def clock_change_delay_ms(self) -> float:
        return self._delay_s * 1000.0

    @property
    def locked_range_mhz(self) -> tuple[int, int] | None:
        """The last requested lock range, or None after a reset (takes effect after the delay)."""
        with self._lock:
            return self._locked_range_mhz

    def supported_sm_clocks_mhz(self) -> tuple[int, ...]:
        return self._spec.supported_sm_clocks_mhz

    def _advance(self) -> float:
        """Integrate energy up to now, applying clock changes that took effect meanwhile."""
        now = self._now_s()
        while self._pending and self._pending[0][0] <= now:
            effective_at_s, clock_mhz = self._pending.popleft()
            self._integrate_until(effective_at_s)
            self._clock_mhz = clock_mhz
        self._integrate_until(now)
        return now

    def _integrate_until(self, until_s: float) -> None:
        elapsed_s = until_s - self._integrated_until_s
        # A time source that steps backwards (it should not) adds no energy rather than removing.
        if elapsed_s > 0:
            self._energy_j += self._power_source(self._clock_mhz) * elapsed_s
            self._integrated_until_s = until_s

    def _schedule_clock(self, clock_mhz: int) -> None:
        now = self._advance()
        self._pending.append((now + self._delay_s, clock_mhz))
        if self._delay_s == 0:
            self._advance()

    def sm_clock_mhz(self) -> int:
        with self._lock:
            self._advance()
            return self._clock_mhz

    def set_locked_sm_clock_mhz(self, min_mhz: int, max_mhz: int) -> None:
        check_locked_range_mhz(self._spec.supported_sm_clocks_mhz, min_mhz, max_mhz)
        with self._lock:
            self._locked_range_mhz = (min_mhz, max_mhz)
            self._schedule_clock(max_mhz)

    def reset_sm_clocks(self) -> None:
        with self._lock:
            self._locked_range_mhz = None
            self._schedule_clock(self._spec.default_sm_clock_mhz)

    def set_power_source(self, power_source: PowerSource) -> None:
        """Swap the power model (e.g. idle → running a batch); energy so far is kept."""
        with self._lock:
            self._advance()
            self._power_source = power_source

    def power_w(self) -> float:
        with self._lock:
            self._advance()
            return float(self._power_source(self._clock_mhz))

    def power_limit_w(self) -> float:
        return self._spec.tdp_w

    def energy_j(self) -> float:
        with self._lock:
            self._advance()
            return self._energy_j

    def __repr__(self) -> str:
        return f"SimulatedGpu(index={self._index}, spec={self._spec.key!r})"
