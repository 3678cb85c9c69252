"""Energy per request for engines that report none (real SGLang), from what a router observes.

The same attribution as ``voltana.energy`` (docs/energy.md), on coarser evidence: instead of
the engine's own iterations, the instance's energy counter at the times the router saw it (the
node agent samples NVML every few hundred milliseconds) and each request's work as the router
saw it happen:

- prefill: from dispatch to the first token, the prompt's tokens spread evenly over that span;
- decode: the tokens that arrived (each is one batch slot of one iteration).

Between two counter readings the energy splits among the requests by the work each did in
between; a stretch without work is idle, handed to the next work (``EnergyLedger``). A request
that finishes after the last reading also gets its share of the stretch since: the latest power
times the stretch, split by the work done in it so far (an estimate, taken out of the next
reading so the books still balance). Errors come from iterations straddling readings and from
work the router cannot see (chunked prefill inside decode batches); over whole requests they
average out. Nothing here reads a clock or a device: times are the caller's (one clock).
"""

from __future__ import annotations

from collections.abc import Hashable
from dataclasses import dataclass
from typing import Generic, TypeVar

from voltana.energy import EnergyLedger, RequestEnergy

KeyT = TypeVar("KeyT", bound=Hashable)


@dataclass
class _Prefill:
    started_s: float
    prompt_tokens: int
    ended_s: float | None = None
    charged_until_s: float = 0.0

    def work(self, until_s: float) -> float:
        """Prompt tokens computed from ``charged_until_s`` to ``until_s``, at the pace of the
        whole prefill (ended) or of the prefill so far (still running)."""
        end_s = self.ended_s if self.ended_s is not None else until_s
        span_s = end_s - self.started_s
        if span_s <= 0:  # began and ended at one instant: all of it, once
            return float(self.prompt_tokens) if self.charged_until_s < until_s else 0.0
        overlap_s = min(end_s, until_s) - self.charged_until_s
        return self.prompt_tokens * overlap_s / span_s if overlap_s > 0 else 0.0

    def done_by(self, until_s: float) -> bool:
        return self.ended_s is not None and self.ended_s <= until_s


class ObservedEnergy(Generic[KeyT]):
    """The estimate for one instance (one GPU or one tensor-parallel group)."""

    def __init__(self) -> None:
        self._ledger: EnergyLedger[KeyT] = EnergyLedger()
        self._prefills: dict[KeyT, _Prefill] = {}
        # Decode tokens per request since the last reading.
        self._tokens: dict[KeyT, float] = {}
        self._reading: tuple[float, float] | None = None  # (at_s, energy_j)
        self._power_w = 0.0
        # Energy handed out since the last reading to requests that finished before it.
        self._tails_j = 0.0

    @property
    def ledger(self) -> EnergyLedger[KeyT]:
        return self._ledger

    @property
    def measuring(self) -> bool:
        """Whether a stretch between two readings has been measured (before that, an estimate
        has nothing to share and would read as zero)."""
        return self._power_w > 0 or self._ledger.measured_j > 0

    @property
    def estimated_tails_j(self) -> float:
        """Energy handed to finished requests ahead of the reading that will measure it."""
        return self._tails_j

    def prefill_started(self, key: KeyT, at_s: float, prompt_tokens: int) -> None:
        self._prefills[key] = _Prefill(at_s, max(1, prompt_tokens), charged_until_s=at_s)

    def prefill_ended(self, key: KeyT, at_s: float) -> None:
        prefill = self._prefills.get(key)
        if prefill is not None and prefill.ended_s is None:
            prefill.ended_s = max(at_s, prefill.started_s)

    def tokens(self, key: KeyT, count: int) -> None:
        """``count`` decode tokens of ``key`` arrived (since the last reading, by construction)."""
        if count > 0:
            self._tokens[key] = self._tokens.get(key, 0.0) + count

    def reading(self, at_s: float, energy_j: float) -> None:
        """The instance's energy counter read ``energy_j`` at ``at_s``."""
        previous, self._reading = self._reading, (at_s, energy_j)
        if previous is not None and at_s <= previous[0]:  # out of order: keep the old one
            self._reading = previous
            return
        measured_j = energy_j - previous[1] if previous is not None else -1.0
        if previous is None or measured_j < 0:
            # The first reading, or the counter restarted (agent or driver): the work so far
            # has no measured energy to share.
            self._work(at_s, consume=True)
            self._tails_j = 0.0
            return
        since_s = previous[0]
        self._power_w = measured_j / (at_s - since_s)
        work = self._work(at_s, consume=True)
        unclaimed_j = max(0.0, measured_j - self._tails_j)
        self._tails_j = 0.0
        self._ledger.charge(unclaimed_j, work)

    def finish(self, key: KeyT, at_s: float) -> RequestEnergy:
        """``key`` left this instance at ``at_s``: its attribution so far plus its estimated
        share of the stretch since the last reading (forgotten here)."""
        tail_j = 0.0
        if self._reading is not None and at_s > self._reading[0]:
            work = self._work(at_s, consume=False)
            total = sum(work.values())
            mine = work.get(key, 0.0)
            if total > 0 and mine > 0:
                tail_j = self._power_w * (at_s - self._reading[0]) * mine / total
        self._prefills.pop(key, None)
        self._tokens.pop(key, None)
        self._tails_j += tail_j
        energy = self._ledger.release(key)
        return RequestEnergy(energy.active_j + tail_j, energy.idle_j)

    def _work(self, until_s: float, *, consume: bool) -> dict[KeyT, float]:
        """Work per request since the last reading, up to ``until_s`` (``consume``: it is
        being charged now)."""
        work: dict[KeyT, float] = dict(self._tokens)
        for key, prefill in list(self._prefills.items()):
            done = prefill.work(until_s)
            if done > 0:
                work[key] = work.get(key, 0.0) + done
            if consume:
                prefill.charged_until_s = until_s
                if prefill.done_by(until_s):  # fully charged: nothing more of it runs here
                    del self._prefills[key]
        if consume:
            self._tokens.clear()
        return work
