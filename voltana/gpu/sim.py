"""``GpuDevice`` for a simulated GPU: datasheet clocks, delayed clock changes, exact energy.

Time comes from an injected ``now_s`` (tests pass a fake clock; the live simulator passes a
scaled ``time.monotonic``). Power comes from an injected ``power_source(sm_clock_mhz) -> W`` that
the simulated engine swaps as its work changes; energy is integrated exactly, because power is
piecewise constant between clock changes and power-source swaps and we integrate across both.

The engine's iterations have exact simulated start and end times, but its event loop wakes up a
little late (a millisecond of wall time is many simulated ones when sped up), so ``draw_during``
takes a span that may have begun already: the GPU draws the iteration's power over exactly
[start, end] and its idle draw after (scheduled ahead), and what it counted meanwhile at a lower
draw is raised. Energy is only ever raised, so the counter stays monotonic.

A reading between an iteration's end and the late start of the next one would count that gap at
the idle draw until the revision comes, so readings on a busy host (where the loop wakes later)
would fall short by a varying amount. When the engine knows its work goes on (``likely_after``:
a decode batch that continues), a reading counts the gap at that draw instead; the next
iteration settles it, and the counter never reads lower than it has read before.
"""

from __future__ import annotations

import bisect
import threading
import time
from collections import deque
from collections.abc import Callable

from voltana.errors import ConfigError
from voltana.gpu.clocks import check_locked_range_mhz
from voltana.hardware.gpus import GpuSpec

PowerSource = Callable[[int], float]
# How far back (simulated seconds) a late power swap may reach: the engine's catch-up after a
# host stall (2 s of wall time at speedup 20 is 40 s).
REVISION_HORIZON_S = 120.0


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
        # (time it takes effect, new power source), oldest first.
        self._pending_power: deque[tuple[float, PowerSource]] = deque()
        self._energy_j = 0.0
        self._integrated_until_s = now_s()
        # Integrated spans (start, end, clock, watts) a late power swap may revise, oldest first,
        # with their start times (for bisection).
        self._recent: list[tuple[float, float, int, float]] = []
        self._recent_starts: list[float] = []
        # (end of the last drawn span, the draw likely to follow it) while the engine's work
        # goes on, and the highest energy a reading returned (readings never go back).
        self._likely_after: tuple[float, PowerSource] | None = None
        self._read_energy_j = 0.0

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

    def _apply_power_swaps_until(self, until_s: float) -> None:
        """Integrate up to each scheduled power swap due by ``until_s`` and make it."""
        while self._pending_power and self._pending_power[0][0] <= until_s:
            effective_at_s, source = self._pending_power.popleft()
            self._integrate_until(effective_at_s)
            self._power_source = source

    def _advance(self) -> float:
        """Integrate energy up to now, applying clock and power changes due meanwhile."""
        now = self._now_s()
        while True:
            clock_at = self._pending[0][0] if self._pending else None
            power_at = self._pending_power[0][0] if self._pending_power else None
            due = [t for t in (clock_at, power_at) if t is not None and t <= now]
            if not due:
                break
            if clock_at is not None and clock_at == min(due):
                effective_at_s, clock_mhz = self._pending.popleft()
                self._integrate_until(effective_at_s)
                self._clock_mhz = clock_mhz
            else:
                effective_at_s, source = self._pending_power.popleft()
                self._integrate_until(effective_at_s)
                self._power_source = source
        self._integrate_until(now)
        return now

    def _integrate_until(self, until_s: float) -> None:
        start_s = self._integrated_until_s
        elapsed_s = until_s - start_s
        # A time source that steps backwards (it should not) adds no energy rather than removing.
        if elapsed_s > 0:
            power_w = self._power_source(self._clock_mhz)
            self._energy_j += power_w * elapsed_s
            self._integrated_until_s = until_s
            self._remember(start_s, until_s, self._clock_mhz, power_w)

    def _remember(self, start_s: float, end_s: float, clock_mhz: int, power_w: float) -> None:
        last = self._recent[-1] if self._recent else None
        if last is not None and last[1] == start_s and last[2:] == (clock_mhz, power_w):
            self._recent[-1] = (last[0], end_s, clock_mhz, power_w)  # same draw: one span
        else:
            self._recent.append((start_s, end_s, clock_mhz, power_w))
            self._recent_starts.append(start_s)
        horizon_s = end_s - REVISION_HORIZON_S
        drop = bisect.bisect_left(self._recent_starts, horizon_s) - 1
        if drop > 0:
            del self._recent[:drop], self._recent_starts[:drop]

    def _revise(self, start_s: float, end_s: float, source: PowerSource) -> None:
        """Count ``source`` over [start_s, end_s] (already integrated) where it draws more than
        what was counted; the spans are split and updated, so a later revision is exact too."""
        first = max(0, bisect.bisect_right(self._recent_starts, start_s) - 1)
        last = bisect.bisect_left(self._recent_starts, end_s)
        revised: list[tuple[float, float, int, float]] = []
        for span_start, span_end, clock_mhz, power_w in self._recent[first:last]:
            low, high = max(span_start, start_s), min(span_end, end_s)
            new_w = source(clock_mhz)
            if high <= low or new_w <= power_w:
                revised.append((span_start, span_end, clock_mhz, power_w))
                continue
            self._energy_j += (new_w - power_w) * (high - low)
            for piece in (
                (span_start, low, clock_mhz, power_w),
                (low, high, clock_mhz, new_w),
                (high, span_end, clock_mhz, power_w),
            ):
                if piece[1] > piece[0]:
                    revised.append(piece)
        self._recent[first:last] = revised
        self._recent_starts[first:last] = [span[0] for span in revised]

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
        """Swap the power model (e.g. idle → running a batch) from now on; energy so far is
        kept and scheduled swaps are dropped."""
        with self._lock:
            self._advance()
            self._pending_power.clear()
            self._power_source = power_source
            self._likely_after = None

    def draw_during(
        self,
        power_source: PowerSource,
        start_s: float,
        end_s: float,
        then: PowerSource,
        likely_after: PowerSource | None = None,
    ) -> None:
        """Draw ``power_source`` over [start_s, end_s], then ``then``; scheduled swaps are
        dropped. The span may have begun (or even ended) already: what was counted over it at a
        lower draw is raised to this one, never lowered, so the counter stays monotonic.
        ``likely_after``: the draw that will most likely follow ``end_s`` (the engine's work goes
        on), which readings count after it until the next call settles what really ran."""
        with self._lock:
            now = self._advance()
            self._pending_power.clear()
            self._likely_after = (end_s, likely_after) if likely_after is not None else None
            if start_s < now:
                self._revise(start_s, min(end_s, now), power_source)
            if end_s > now:
                self._power_source = power_source
                self._pending_power.append((end_s, then))
            else:
                self._power_source = then

    def settle_likely(self, goes_on: bool) -> None:
        """The likely draw did run from the last span's end until now (the engine's batch went
        on, e.g. until a request of it was cancelled): count it, so no reading is left above
        the energy counted when the batch then stops; expect it further only if ``goes_on``."""
        with self._lock:
            now = self._advance()
            if self._likely_after is None:
                return
            end_s, likely = self._likely_after
            if now > end_s:
                self._revise(end_s, now, likely)
                end_s = now
            self._likely_after = (end_s, likely) if goes_on else None

    def power_w(self) -> float:
        with self._lock:
            self._advance()
            return float(self._power_source(self._clock_mhz))

    def power_limit_w(self) -> float:
        return self._spec.tdp_w

    def energy_j(self) -> float:
        with self._lock:
            now = self._advance()
            self._read_energy_j = max(self._read_energy_j, self._energy_j + self._likely_j(now))
            return self._read_energy_j

    def _likely_j(self, now_s: float) -> float:
        """What the next span will add over [end of the last drawn span, now] once the engine's
        late loop draws it, beyond the idle draw counted there meanwhile."""
        if self._likely_after is None or now_s <= self._likely_after[0]:
            return 0.0
        end_s, likely = self._likely_after
        extra_w = likely(self._clock_mhz) - self._power_source(self._clock_mhz)
        return max(0.0, extra_w) * (now_s - end_s)

    def __repr__(self) -> str:
        return f"SimulatedGpu(index={self._index}, spec={self._spec.key!r})"
