"""A simulated GPU that several processes hold at once, through a small state file.

A real GPU lives outside every process that talks to it: the node agent locks its clock, the
serving engine runs slower for it, the agent's fail-safe watchdog resets it when the agent
dies, and an operator's ``nvidia-smi`` sees all of it. ``SharedSimulatedGpu`` gives a simulated
GPU that property: its clock lock lives in ``<state_dir>/gpu<index>.json``, so a lock set in
one process is the clock of every process, and outlives the process that set it.

Power and energy: the process that runs the work (the simulated engine, ``publishes_power``)
integrates them as ``SimulatedGpu`` does and publishes its latest power and energy reading to
the file (at most every ``publish_interval_s``); every other process (the agent sampling it)
reads that reading. Times in the file are Unix seconds (``time.time``); a clock change takes
effect ``clock_change_delay_ms`` of wall time after it was asked for.

Writers take an exclusive ``flock`` on ``<file>.lock`` for read-modify-write and replace the
file atomically, so readers never see half a write and need no lock.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import tempfile
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

from voltana.gpu.clocks import check_locked_range_mhz
from voltana.gpu.errors import GpuError
from voltana.gpu.sim import PowerSource, SimulatedGpu
from voltana.hardware.gpus import GpuSpec

DEFAULT_PUBLISH_INTERVAL_S = 0.1
_STATE_VERSION = 1


def state_path(state_dir: str | Path, index: int) -> Path:
    """Where GPU ``index`` of a shared simulated node keeps its state."""
    return Path(state_dir) / f"gpu{index}.json"


class SharedSimulatedGpu(SimulatedGpu):
    """A ``GpuDevice`` (and a ``SimulatedGpu``) whose clock lock lives in a file; see the
    module docstring. ``wall_s`` is the shared time base of the file (Unix seconds)."""

    def __init__(
        self,
        spec: GpuSpec,
        index: int = 0,
        *,
        state_dir: str | Path,
        now_s: Callable[[], float] = time.monotonic,
        power_source: PowerSource | None = None,
        clock_change_delay_ms: float | None = None,
        publishes_power: bool = False,
        publish_interval_s: float = DEFAULT_PUBLISH_INTERVAL_S,
        wall_s: Callable[[], float] = time.time,
    ) -> None:
        super().__init__(
            spec,
            index,
            now_s=now_s,
            power_source=power_source,
            clock_change_delay_ms=0.0,  # the delay applies to the shared clock below
            uuid=f"GPU-shared-sim-{spec.key}-{index}",
        )
        delay_ms = (
            spec.clock_change_delay_ms
            if clock_change_delay_ms is None
            else float(clock_change_delay_ms)
        )
        self._shared_delay_s = delay_ms / 1000.0
        self._path = state_path(state_dir, index)
        self._lock_path = self._path.with_name(self._path.name + ".lock")
        self._wall_s = wall_s
        self._publishes_power = publishes_power
        self._publish_interval_s = publish_interval_s
        self._published_at_s = float("-inf")
        self._cached_key: tuple[int, int, int] | None = None
        self._cached: dict[str, Any] = {}
        try:
            self._path.parent.mkdir(parents=True, exist_ok=True)
            with self._exclusive():
                if not self._path.exists():
                    self._write(self._initial_state())
        except OSError as error:
            raise GpuError(f"cannot set up the shared GPU state at {self._path}: {error}") from None

    @property
    def path(self) -> Path:
        return self._path

    @property
    def clock_change_delay_ms(self) -> float:
        return self._shared_delay_s * 1000.0

    # ---- the state file ----------------------------------------------------------------------

    def _initial_state(self) -> dict[str, Any]:
        default_mhz = self.spec.default_sm_clock_mhz
        return {
            "version": _STATE_VERSION,
            "gpu_key": self.spec.key,
            "index": self.index,
            "locked_range_mhz": None,
            "target_mhz": default_mhz,
            "previous_mhz": default_mhz,
            "effective_at_s": 0.0,
            "power_w": None,
            "energy_j": None,
        }

    @contextlib.contextmanager
    def _exclusive(self) -> Iterator[None]:
        with self._lock_path.open("a") as lock:
            fcntl.flock(lock, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(lock, fcntl.LOCK_UN)

    def _read(self) -> dict[str, Any]:
        """The state, reread only when the file changed (it is replaced on every write)."""
        try:
            stat = os.stat(self._path)
            key = (stat.st_ino, stat.st_mtime_ns, stat.st_size)
            if key != self._cached_key:
                self._cached = json.loads(self._path.read_text())
                self._cached_key = key
        except (OSError, ValueError) as error:
            raise GpuError(f"cannot read the shared GPU state {self._path}: {error}") from None
        return self._cached

    def _write(self, state: dict[str, Any]) -> None:
        fd, tmp = tempfile.mkstemp(dir=self._path.parent, prefix=self._path.name, suffix=".tmp")
        try:
            with os.fdopen(fd, "w") as out:
                json.dump(state, out)
            os.replace(tmp, self._path)
        except BaseException:
            with contextlib.suppress(OSError):
                os.unlink(tmp)
            raise

    def _update(self, change: Callable[[dict[str, Any]], None]) -> None:
        try:
            with self._exclusive():
                self._cached_key = None
                state = dict(self._read())
                change(state)
                self._write(state)
        except OSError as error:
            raise GpuError(f"cannot write the shared GPU state {self._path}: {error}") from None

    def _shared_clock_mhz(self, state: dict[str, Any]) -> int:
        if self._wall_s() >= state["effective_at_s"]:
            return int(state["target_mhz"])
        return int(state["previous_mhz"])

    # ---- clocks --------------------------------------------------------------------------------

    def _advance(self) -> float:
        """Integrate energy up to now at the clock the shared state says the GPU runs at."""
        now = self._now_s()
        clock_mhz = self._shared_clock_mhz(self._read())
        self._apply_power_swaps_until(now)  # e.g. idle from the end of an engine iteration
        self._integrate_until(now)
        self._clock_mhz = clock_mhz
        return now

    def _schedule_shared_clock(self, locked: tuple[int, int] | None, clock_mhz: int) -> None:
        wall_s = self._wall_s()

        def change(state: dict[str, Any]) -> None:
            state["previous_mhz"] = self._shared_clock_mhz(state)
            state["target_mhz"] = clock_mhz
            state["effective_at_s"] = wall_s + self._shared_delay_s
            state["locked_range_mhz"] = list(locked) if locked is not None else None

        with self._lock:
            self._advance()
            self._update(change)

    @property
    def locked_range_mhz(self) -> tuple[int, int] | None:
        locked = self._read()["locked_range_mhz"]
        return (int(locked[0]), int(locked[1])) if locked else None

    def set_locked_sm_clock_mhz(self, min_mhz: int, max_mhz: int) -> None:
        check_locked_range_mhz(self.spec.supported_sm_clocks_mhz, min_mhz, max_mhz)
        self._schedule_shared_clock((min_mhz, max_mhz), max_mhz)

    def reset_sm_clocks(self) -> None:
        self._schedule_shared_clock(None, self.spec.default_sm_clock_mhz)

    # ---- power and energy ----------------------------------------------------------------------

    def _publish(self, force: bool = False) -> None:
        wall_s = self._wall_s()
        if not force and wall_s - self._published_at_s < self._publish_interval_s:
            return
        self._published_at_s = wall_s
        power_w = super().power_w()
        energy_j = super().energy_j()

        def change(state: dict[str, Any]) -> None:
            state["power_w"] = power_w
            state["energy_j"] = energy_j

        self._update(change)

    def set_power_source(self, power_source: PowerSource) -> None:
        super().set_power_source(power_source)
        if self._publishes_power:
            self._publish()

    def draw_during(
        self,
        power_source: PowerSource,
        start_s: float,
        end_s: float,
        then: PowerSource,
        likely_after: PowerSource | None = None,
    ) -> None:
        super().draw_during(power_source, start_s, end_s, then, likely_after)
        if self._publishes_power:
            self._publish()

    def power_w(self) -> float:
        if self._publishes_power:
            self._publish()
            return super().power_w()
        published = self._read()["power_w"]
        return float(published) if published is not None else super().power_w()

    def energy_j(self) -> float:
        if self._publishes_power:
            self._publish()
            return super().energy_j()
        published = self._read()["energy_j"]
        return float(published) if published is not None else super().energy_j()

    def __repr__(self) -> str:
        return f"SharedSimulatedGpu(index={self.index}, spec={self.spec.key!r}, path={self._path})"
