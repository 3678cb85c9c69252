"""What the requests of one window add up to, kept so a request can be added or taken out.

Both the brute-force window (every completion of the window added once) and the sliding
windows of ``completion_index`` (requests added as they finish, taken out as they age out) sum
requests here, so the two give the same aggregates by construction of the sums, and a test
compares them on random data.
"""

from __future__ import annotations

import bisect
from collections import Counter
from collections.abc import Iterable

from voltana.contract.state import SloTarget
from voltana.services.telemetry.records import Completion


def meets_ttft(completion: Completion, default_slo: SloTarget) -> bool:
    slo = completion.slo or default_slo
    return completion.ok and completion.ttft_ms is not None and completion.ttft_ms <= slo.ttft_ms


def meets_itl(completion: Completion, default_slo: SloTarget) -> bool:
    slo = completion.slo or default_slo
    itl_ms = completion.mean_itl_ms
    # A one-token answer has no inter-token gap, so it cannot miss the ITL target.
    return completion.ok and (itl_ms is None or itl_ms <= slo.itl_ms)


def _insort_or_remove(values: list[float], value: float, sign: int, keep_sorted: bool) -> None:
    if sign < 0:
        del values[bisect.bisect_left(values, value)]
    elif keep_sorted:
        bisect.insort(values, value)
    else:
        values.append(value)


class RequestTotals:
    """Counts, sums and sorted latencies of a multiset of completions (judged by ``slo`` when
    they carry no SLO of their own). ``add``/``remove`` cost O(log n) plus a memmove."""

    def __init__(self, slo: SloTarget) -> None:
        self.slo = slo
        self.finished = 0
        self.failed = 0
        self.output_tokens = 0
        self.ttft_met = 0
        self.itl_met = 0
        self.both_met = 0
        self.failed_by_status: Counter[str] = Counter()
        # Latencies of successful requests, ascending (percentiles index them directly).
        self.ttfts_ms: list[float] = []
        self.itls_ms: list[float] = []
        self.request_energy_j = 0.0
        self.requests_with_energy = 0

    @classmethod
    def of(cls, completions: Iterable[Completion], slo: SloTarget) -> RequestTotals:
        """The totals of ``completions`` (latencies sorted once, not inserted one by one)."""
        totals = cls(slo)
        for completion in completions:
            totals._count(completion, 1, sorted_latencies=False)
        totals.ttfts_ms.sort()
        totals.itls_ms.sort()
        return totals

    def add(self, completion: Completion) -> None:
        self._count(completion, 1)

    def remove(self, completion: Completion) -> None:
        """Take out a completion that was added (and not taken out since)."""
        self._count(completion, -1)

    def _count(self, completion: Completion, sign: int, *, sorted_latencies: bool = True) -> None:
        self.finished += sign
        self.output_tokens += sign * completion.output_tokens
        ttft_met = meets_ttft(completion, self.slo)
        itl_met = meets_itl(completion, self.slo)
        self.ttft_met += sign * ttft_met
        self.itl_met += sign * itl_met
        self.both_met += sign * (ttft_met and itl_met)
        if completion.ok:
            if completion.ttft_ms is not None:
                _insort_or_remove(self.ttfts_ms, completion.ttft_ms, sign, sorted_latencies)
            if completion.mean_itl_ms is not None:
                _insort_or_remove(self.itls_ms, completion.mean_itl_ms, sign, sorted_latencies)
        else:
            self.failed += sign
            self.failed_by_status[completion.status_name] += sign
            if not self.failed_by_status[completion.status_name]:
                del self.failed_by_status[completion.status_name]
        if completion.energy_j is not None:
            self.requests_with_energy += sign
            self.request_energy_j += sign * completion.energy_j
            if not self.requests_with_energy:
                self.request_energy_j = 0.0  # no float residue survives an empty window
