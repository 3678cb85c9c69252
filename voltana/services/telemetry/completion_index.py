"""Completions in process memory, ordered by finish time, with sliding windows kept up to date.

``GetAggregates`` used to decode and sum every completion of its window on each call (2.1 s for
30k completions in a 3 h window, on Redis). Here each window length asked for (with the SLO it
is judged by) keeps its sums (``RequestTotals``, per instance and for the cluster) and moves:
a call adds the requests that finished since the last call and takes out those that aged out,
so its cost follows what changed, not the window's size. A completion reported late (a
retried report, one replayed after an outage) enters every window that covers its finish time
when it arrives.

The index holds at most ``cap`` completions, dropping the earliest finished first, as the
stores do (so a window never counts a completion its store no longer holds). A window length
seen for the first time is built once from the index (no decoding); at most ``max_windows``
lengths are kept, the least recently used dropped.
"""

from __future__ import annotations

import bisect
from collections import OrderedDict
from collections.abc import Collection, Iterable, Mapping, Sequence

from voltana.contract.state import SloTarget
from voltana.services.telemetry.records import Aggregates, Completion, SeriesPoint, WindowReport
from voltana.services.telemetry.request_totals import RequestTotals
from voltana.services.telemetry.window import aggregates_of, in_window

DEFAULT_MAX_WINDOWS = 8


class SlidingWindow:
    """Sums of the completions that finished in ``(now_s - window_s, now_s]``, per instance
    and for every request, as of the last ``advance``."""

    def __init__(self, index: CompletionIndex, window_s: float, slo: SloTarget) -> None:
        self._index = index
        self.window_s = window_s
        self.slo = slo
        self.now_s: float | None = None
        self.included: set[Completion] = set()
        self.cluster = RequestTotals(slo)
        self.instances: dict[str, RequestTotals] = {}

    def _add(self, completion: Completion) -> None:
        self.included.add(completion)
        self.cluster.add(completion)
        for instance_id in completion.instance_ids:
            totals = self.instances.get(instance_id)
            if totals is None:
                totals = self.instances[instance_id] = RequestTotals(self.slo)
            totals.add(completion)

    def discard(self, completion: Completion) -> None:
        if completion not in self.included:
            return
        self.included.remove(completion)
        self.cluster.remove(completion)
        for instance_id in completion.instance_ids:
            totals = self.instances[instance_id]
            totals.remove(completion)
            if not totals.finished:
                del self.instances[instance_id]

    def offer(self, completion: Completion) -> None:
        """A completion the index just took: counted now if it finished inside the window as
        of the last ``advance`` (later ones enter when the window reaches them)."""
        if self.now_s is not None and in_window(
            completion.finished_at_s, self.now_s - self.window_s, self.now_s
        ):
            self._add(completion)

    def advance(self, now_s: float) -> None:
        """Move the window to end at ``now_s``."""
        last_s = self.now_s
        if last_s is None or now_s < last_s or now_s - last_s >= self.window_s:
            self._rebuild(now_s)
            return
        # Out: finished in (last start, new start]; in: finished in (last end, new end]. The
        # two ranges do not overlap (the window moved less than its length).
        for completion in self._index.finished_between(
            last_s - self.window_s, now_s - self.window_s
        ):
            self.discard(completion)
        for completion in self._index.finished_between(last_s, now_s):
            self._add(completion)
        self.now_s = now_s

    def _rebuild(self, now_s: float) -> None:
        completions = self._index.finished_between(now_s - self.window_s, now_s)
        by_instance: dict[str, list[Completion]] = {}
        for completion in completions:
            for instance_id in completion.instance_ids:
                by_instance.setdefault(instance_id, []).append(completion)
        self.included = set(completions)
        self.cluster = RequestTotals.of(completions, self.slo)
        self.instances = {i: RequestTotals.of(c, self.slo) for i, c in by_instance.items()}
        self.now_s = now_s

    def totals_of(self, instance_ids: Collection[str]) -> RequestTotals:
        """Requests of any of ``instance_ids`` (each once, also when it used two of them)."""
        if len(instance_ids) == 1:
            (instance_id,) = instance_ids
            return self.instances.get(instance_id) or RequestTotals(self.slo)
        wanted = set(instance_ids)
        return RequestTotals.of(
            [c for c in self.included if not wanted.isdisjoint(c.instance_ids)], self.slo
        )


class CompletionIndex:
    """Every completion a store holds (each once), by finish time, and the windows over them."""

    def __init__(self, cap: int, *, max_windows: int = DEFAULT_MAX_WINDOWS) -> None:
        self._cap = cap
        self._max_windows = max_windows
        # Parallel lists ordered by finish time (ties in arrival order).
        self._finished_s: list[float] = []
        self._completions: list[Completion] = []
        self._known: set[Completion] = set()
        # Record ids of the kept completions: a record sent again (a retry, a replay) counts
        # once even where its content differs.
        self._known_ids: set[str] = set()
        self._windows: OrderedDict[tuple[float, SloTarget], SlidingWindow] = OrderedDict()

    def __len__(self) -> int:
        return len(self._completions)

    def __contains__(self, completion: object) -> bool:
        return completion in self._known

    def clear(self) -> None:
        self._finished_s.clear()
        self._completions.clear()
        self._known.clear()
        self._known_ids.clear()
        self._windows.clear()

    def add(self, completion: Completion) -> bool:
        """Keep ``completion``; False when it was already kept (a retried report)."""
        if completion in self._known or (
            completion.record_id and completion.record_id in self._known_ids
        ):
            return False
        position = bisect.bisect_right(self._finished_s, completion.finished_at_s)
        self._finished_s.insert(position, completion.finished_at_s)
        self._completions.insert(position, completion)
        self._known.add(completion)
        if completion.record_id:
            self._known_ids.add(completion.record_id)
        for window in self._windows.values():
            window.offer(completion)
        while len(self._completions) > self._cap:
            self._finished_s.pop(0)
            evicted = self._completions.pop(0)
            self._known.discard(evicted)
            self._known_ids.discard(evicted.record_id)
            for window in self._windows.values():
                window.discard(evicted)
        return True

    def add_all(self, completions: Iterable[Completion]) -> None:
        for completion in completions:
            self.add(completion)

    def finished_between(self, start_s: float, end_s: float) -> Sequence[Completion]:
        """Completions that finished in ``(start_s, end_s]``, by finish time."""
        low = bisect.bisect_right(self._finished_s, start_s)
        high = bisect.bisect_right(self._finished_s, end_s)
        return self._completions[low:high]

    def window(self, window_s: float, slo: SloTarget, now_s: float) -> SlidingWindow:
        """The window of that length and SLO, moved to end at ``now_s``."""
        key = (window_s, slo)
        window = self._windows.get(key)
        if window is None:
            window = self._windows[key] = SlidingWindow(self, window_s, slo)
            while len(self._windows) > self._max_windows:
                self._windows.popitem(last=False)
        else:
            self._windows.move_to_end(key)
        window.advance(now_s)
        return window

    def report(
        self,
        *,
        instance_ids: Collection[str],
        whole_cluster: bool,
        window_s: float,
        now_s: float,
        energy_series: Mapping[str, Sequence[SeriesPoint]],
        clock_series: Mapping[str, Sequence[SeriesPoint]],
        slo: SloTarget,
    ) -> WindowReport:
        """What ``window.compute_window_report`` computes from every completion, from the
        window's running sums."""
        window = self.window(window_s, slo, now_s)
        selected = sorted(set(instance_ids))

        def aggregate(totals: RequestTotals, ids: Collection[str], label: str | None) -> Aggregates:
            return aggregates_of(
                totals,
                instance_id=label,
                window_s=window_s,
                now_s=now_s,
                energy_series=[energy_series.get(i, ()) for i in ids],
                clock_series=[clock_series.get(i, ()) for i in ids],
            )

        cluster_totals = window.cluster if whole_cluster else window.totals_of(selected)
        return WindowReport(
            now_s=now_s,
            window_s=window_s,
            instances={i: aggregate(window.totals_of([i]), [i], i) for i in selected},
            cluster=aggregate(cluster_totals, selected, None),
        )
