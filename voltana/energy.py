"""Energy per request: one GPU's measured energy, split among the requests it served.

The pure core of the attribution that the offline simulator and the simulated engines both run
(see docs/energy.md). Its caller measures the GPU's energy over consecutive stretches of time
and says, for each stretch, how the work done in it splits among requests:

- a prefill iteration by each request's share of the iteration's prompt tokens,
- a decode iteration by each request's share of the batch (one token each),
- no work at all: the GPU idles.

Active energy goes to the requests of its stretch at once. Idle energy accumulates and goes to
the requests of the next work, by the same shares: the GPU was kept powered, waiting for them.
``settle`` hands idle energy left after the last work to the requests of that work (end of a
run); ``spread_unclaimed`` charges the idle energy of GPUs that did no work at all to the
cluster's requests. So every joule measured is attributed exactly once: the requests' active and idle shares
plus ``pending_idle_j`` (plus ``released_j``, what requests took with them when they left) always
add up to ``measured_j``. Nothing here reads a clock or a device.
"""

from __future__ import annotations

from collections.abc import Hashable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

KeyT = TypeVar("KeyT", bound=Hashable)


@dataclass
class RequestEnergy:
    """One request's share of one GPU's energy (or, summed, of every GPU it ran on)."""

    active_j: float = 0.0
    idle_j: float = 0.0

    @property
    def total_j(self) -> float:
        return self.active_j + self.idle_j

    def __add__(self, other: RequestEnergy) -> RequestEnergy:
        return RequestEnergy(self.active_j + other.active_j, self.idle_j + other.idle_j)


class EnergyLedger(Generic[KeyT]):
    """The attribution of one GPU (or one tensor-parallel group measured as a whole)."""

    def __init__(self) -> None:
        self._shares: dict[KeyT, RequestEnergy] = {}
        self._last_work: dict[KeyT, float] = {}
        self.measured_j = 0.0
        self.pending_idle_j = 0.0
        self.released_j = 0.0

    def charge(self, energy_j: float, work: Mapping[KeyT, float] | None) -> None:
        """Energy measured over one stretch, and the work done in it (request → weight: prompt
        tokens computed for prefill, 1 per batch slot for decode); None or empty = idle."""
        if energy_j <= 0:  # counters that did not move (or went back) attribute nothing
            return
        self.measured_j += energy_j
        total = sum(weight for weight in work.values() if weight > 0) if work else 0.0
        if not work or total <= 0:
            self.pending_idle_j += energy_j
            return
        idle_j, self.pending_idle_j = self.pending_idle_j, 0.0
        self._split(energy_j, idle_j, work, total)
        self._last_work = dict(work)

    def _split(
        self, active_j: float, idle_j: float, work: Mapping[KeyT, float], total: float
    ) -> None:
        for key, weight in work.items():
            if weight <= 0:
                continue
            share = weight / total
            energy = self._shares.get(key)
            if energy is None:
                energy = self._shares[key] = RequestEnergy()
            energy.active_j += active_j * share
            energy.idle_j += idle_j * share

    def settle(self) -> None:
        """Hand the idle energy since the last work to that work's requests (end of a run)."""
        total = sum(weight for weight in self._last_work.values() if weight > 0)
        if self.pending_idle_j > 0 and total > 0:
            idle_j, self.pending_idle_j = self.pending_idle_j, 0.0
            self._split(0.0, idle_j, self._last_work, total)

    def energy_of(self, key: KeyT) -> RequestEnergy:
        """What ``key`` was attributed so far (zero when nothing)."""
        energy = self._shares.get(key)
        return RequestEnergy(energy.active_j, energy.idle_j) if energy else RequestEnergy()

    def release(self, key: KeyT) -> RequestEnergy:
        """``key``'s attribution, forgotten here (the request left this GPU)."""
        self._last_work.pop(key, None)
        energy = self._shares.pop(key, None) or RequestEnergy()
        self.released_j += energy.total_j
        return energy

    def shares(self) -> dict[KeyT, RequestEnergy]:
        """Every request's attribution so far."""
        return {key: RequestEnergy(e.active_j, e.idle_j) for key, e in self._shares.items()}

    @property
    def attributed_j(self) -> float:
        return sum(energy.total_j for energy in self._shares.values())


def spread_unclaimed(energies: list[RequestEnergy], unclaimed_j: float) -> list[RequestEnergy]:
    """``energies`` with ``unclaimed_j`` added to their idle shares, in proportion to their
    active energy: the idle draw of GPUs that served no request at all (spare capacity kept
    powered for the cluster), charged to the cluster's requests. Unchanged when nobody did work.
    """
    total_active_j = sum(energy.active_j for energy in energies)
    if unclaimed_j <= 0 or total_active_j <= 0:
        return list(energies)
    return [
        RequestEnergy(e.active_j, e.idle_j + unclaimed_j * e.active_j / total_active_j)
        for e in energies
    ]
