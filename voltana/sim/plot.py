"""Clock, power and queue length per instance over time, one column per policy."""

from __future__ import annotations

from collections.abc import Sequence
from pathlib import Path

from voltana.errors import ConfigError
from voltana.sim.simulator import SimulationResult


def plot_results(results: Sequence[SimulationResult], path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")  # files only; never needs a display
    import matplotlib.pyplot as plt

    columns = len(results)
    figure, axes = plt.subplots(3, columns, figsize=(6 * columns, 9), sharex="col", squeeze=False)
    for column, result in enumerate(results):
        top, middle, bottom = axes[0][column], axes[1][column], axes[2][column]
        for instance_id, series in zip(result.instance_ids, result.series, strict=True):
            times = [t - result.start_s for t in series.time_s]
            top.step(times, series.sm_clock_mhz, where="post", label=instance_id)
            middle.plot(times, series.power_w, label=instance_id)
            bottom.plot(times, series.queue_len, label=instance_id)
        top.set_title(result.policy)
        top.set_ylabel("SM clock (MHz)")
        middle.set_ylabel("power per GPU (W)")
        bottom.set_ylabel("queue length")
        bottom.set_xlabel("time (s)")
        top.legend(fontsize="small", loc="lower right")
    figure.tight_layout()
    try:
        figure.savefig(path, dpi=100)
    except OSError as exc:
        raise ConfigError(f"cannot write {path}: {exc.strerror}") from None
    finally:
        plt.close(figure)
