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

from collections.abc import Hashable, Iterable, Mapping
from dataclasses import dataclass
from typing import Generic, TypeVar

KeyT = TypeVar("KeyT", bound=Hashable)


@dataclass(slots=True)
class RequestEnergy:
    """One request's share of one GPU's energy (or, summed, of every GPU it ran on)."""

    active_j: float = 0.0
    idle_j: float = 0.0

    @property
    def total_j(self) -> float:
        return self.active_j + self.idle_j

    def __add__(self, other: RequestEnergy) -> RequestEnergy:
        return RequestEnergy(self.active_j + other.active_j, self.idle_j + other.idle_j)


class WorkShares(Generic[KeyT]):
    """One stretch's work as each request's fraction of it, computed once: a caller that charges
    the same work many times (the simulator, at every energy integration of an iteration) then
    pays no re-summing or copying per charge. Immutable once built."""

    __slots__ = ("fraction", "fractions", "keys", "weights")

    def __init__(self, weights: Mapping[KeyT, float]) -> None:
        self.weights = dict(weights)
        total = sum(weight for weight in self.weights.values() if weight > 0)
        working = [(key, w) for key, w in self.weights.items() if w > 0] if total > 0 else []
        self.keys: tuple[KeyT, ...] = tuple(key for key, _ in working)
        # Each key's fraction, or one fraction that every key has (``fractions`` then None).
        self.fractions: tuple[float, ...] | None = tuple(w / total for _, w in working)
        self.fraction = 0.0

    @classmethod
    def uniform(cls, keys: Iterable[KeyT]) -> WorkShares[KeyT]:
        """One slot each (a decode batch): the same fraction as ``WorkShares({k: 1.0, ...})``
        without a pass per key in Python."""
        work = cls.__new__(cls)
        work.keys = tuple(keys)
        work.weights = dict.fromkeys(work.keys, 1.0)
        work.fractions = None
        work.fraction = 1.0 / float(len(work.keys)) if work.keys else 0.0
        return work


class EnergyLedger(Generic[KeyT]):
    """The attribution of one GPU (or one tensor-parallel group measured as a whole)."""

    def __init__(self) -> None:
        self._shares: dict[KeyT, RequestEnergy] = {}
        self._last_work: WorkShares[KeyT] = WorkShares({})
        # The last work charged and its keys' entries in ``_shares``: a caller that charges the
        # same work many times (an iteration's stretches, a batch that did not change) then
        # pays no look-up per key and charge. Dropped when an entry leaves (``release``).
        self._resolved: tuple[WorkShares[KeyT], list[RequestEnergy]] | None = None
        self.measured_j = 0.0
        self.pending_idle_j = 0.0
        self.released_j = 0.0

    def charge(self, energy_j: float, work: Mapping[KeyT, float] | WorkShares[KeyT] | None) -> None:
        """Energy measured over one stretch, and the work done in it (request → weight: prompt
        tokens computed for prefill, 1 per batch slot for decode); None or empty = idle."""
        if energy_j <= 0:  # counters that did not move (or went back) attribute nothing
            return
        self.measured_j += energy_j
        if work is not None and not isinstance(work, WorkShares):
            work = WorkShares(work)
        if work is None or not work.keys:
            self.pending_idle_j += energy_j
            return
        idle_j, self.pending_idle_j = self.pending_idle_j, 0.0
        self._split(energy_j, idle_j, work)
        self._last_work = work

    def _entries(self, work: WorkShares[KeyT]) -> list[RequestEnergy]:
        """The attribution entry of each of ``work``'s keys, in its order (created at 0)."""
        resolved = self._resolved
        if resolved is not None and resolved[0] is work:
            return resolved[1]
        shares = self._shares
        entries = []
        for key in work.keys:
            energy = shares.get(key)
            if energy is None:
                energy = shares[key] = RequestEnergy()
            entries.append(energy)
        self._resolved = (work, entries)
        return entries

    def _split(self, active_j: float, idle_j: float, work: WorkShares[KeyT]) -> None:
        entries = self._entries(work)
        fractions = work.fractions
        if fractions is None:  # one fraction for all: the same products, computed once
            active_share = active_j * work.fraction
            for energy in entries:
                energy.active_j += active_share
            if idle_j:  # adding 0.0 changes nothing; most stretches follow other work
                idle_share = idle_j * work.fraction
                for energy in entries:
                    energy.idle_j += idle_share
            return
        for energy, share in zip(entries, fractions, strict=True):
            energy.active_j += active_j * share
            if idle_j:
                energy.idle_j += idle_j * share

    def settle(self) -> None:
        """Hand the idle energy since the last work to that work's requests (end of a run)."""
        if self.pending_idle_j > 0 and self._last_work.keys:
            idle_j, self.pending_idle_j = self.pending_idle_j, 0.0
            self._split(0.0, idle_j, self._last_work)

    def energy_of(self, key: KeyT) -> RequestEnergy:
        """What ``key`` was attributed so far (zero when nothing)."""
        energy = self._shares.get(key)
        return RequestEnergy(energy.active_j, energy.idle_j) if energy else RequestEnergy()

    def release(self, key: KeyT) -> RequestEnergy:
        """``key``'s attribution, forgotten here (the request left this GPU)."""
        if key in self._last_work.weights:
            weights = self._last_work.weights
            self._last_work = WorkShares({k: w for k, w in weights.items() if k != key})
        self._resolved = None
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
