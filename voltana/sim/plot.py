"""Clock, power and queue length per instance over time, one column per policy.

The columns share their axes (time per column, each quantity across a row), so policies compare
at a glance; each instance has its own colour, line style, marker and width (wider lines drawn
first), so instances that sit on the same value stay visible instead of hiding each other.
"""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path
from typing import Any

from voltana.errors import ConfigError
from voltana.sim.simulator import SimulationResult

_LINE_STYLES = ("-", "--", "-.", ":")
_MARKERS = ("o", "s", "^", "D", "v", "P", "X", "*")


def instance_style(index: int, count: int, points: int) -> dict[str, Any]:
    """Matplotlib line keywords that tell instance ``index`` of ``count`` apart."""
    return {
        "color": f"C{index % 10}",
        "linestyle": _LINE_STYLES[index % len(_LINE_STYLES)],
        "marker": _MARKERS[index % len(_MARKERS)],
        # A few markers per line, staggered so they do not sit on top of each other.
        "markevery": (index % 4 * max(1, points // 48), max(1, points // 12)),
        "markersize": 4,
        # Earlier (drawn underneath) lines are wider, so an identical later one leaves a rim.
        "linewidth": 1.0 + 1.5 * (count - 1 - index) / max(1, count - 1),
        "alpha": 0.9,
        "zorder": 2 + index,
    }


def plot_results(results: Sequence[SimulationResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    columns = len(results)
    figure, axes = plt.subplots(
        3, columns, figsize=(6 * columns, 9), sharex=True, sharey="row", squeeze=False
    )
    for column, result in enumerate(results):
        top, middle, bottom = axes[0][column], axes[1][column], axes[2][column]
        count = len(result.instance_ids)
        for index, (instance_id, series) in enumerate(
            zip(result.instance_ids, result.series, strict=True)
        ):
            times = [t - result.start_s for t in series.time_s]
            style = instance_style(index, count, len(times))
            top.step(times, series.sm_clock_mhz, where="post", label=instance_id, **style)
            middle.plot(times, series.power_w, label=instance_id, **style)
            bottom.plot(times, series.queue_len, label=instance_id, **style)
        top.set_title(result.policy)
        bottom.set_xlabel("time (s)")
        for axis in (top, middle, bottom):
            axis.grid(alpha=0.3)
    axes[0][0].set_ylabel("SM clock (MHz)")
    axes[1][0].set_ylabel("power per GPU (W)")
    axes[2][0].set_ylabel("queue length")
    axes[0][0].legend(fontsize="small", loc="best")
    figure.tight_layout()
    try:
        figure.savefig(path, dpi=100)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        plt.close(figure)
