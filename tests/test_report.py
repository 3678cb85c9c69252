"""Run reports: summaries and the side-by-side table, with measured and unknown energy."""

from __future__ import annotations

import pytest

from voltana.contract.state import SloTarget
from voltana.report import RunOutcome, add_savings, format_table, summarize

pytestmark = pytest.mark.unit


def outcome(policy: str, energy_j: float | None) -> RunOutcome:
    return RunOutcome(
        policy=policy,
        requests=3,
        ttft_ms=[100.0, 200.0],
        mean_itl_ms=[20.0, 30.0],
        output_tokens=40,
        energy_j=energy_j,
        duration_s=10.0,
        num_gpus=2,
        rejected={"timeout": 1},
    )


def table_cells(table: str) -> dict[str, list[str]]:
    """Label -> cells of each row (labels are the text left of the first double space)."""
    rows: dict[str, list[str]] = {}
    for line in table.splitlines()[2:]:
        label, _, cells = line.partition("  ")
        rows[label.strip()] = cells.split()
    return rows


def test_measured_energy_gives_per_token_power_and_savings() -> None:
    rows = [summarize(outcome(p, e), SloTarget()) for p, e in [("a", 8000.0), ("b", 6000.0)]]
    add_savings(rows)
    assert rows[0]["energy_per_output_token_j"] == pytest.approx(200.0)
    assert rows[0]["avg_power_w"] == pytest.approx(400.0)
    assert rows[1]["energy_savings_vs_first"] == pytest.approx(0.25)
    cells = table_cells(format_table(rows))
    assert cells["energy (kJ)"] == ["8.0", "6.0"]
    assert cells["savings vs first"] == ["+0.0%", "+25.0%"]
    assert cells["J / output token"] == ["200.000", "150.000"]
    assert cells["avg power / GPU (W)"] == ["400", "300"]


def test_unknown_energy_is_none_in_the_summary_and_dash_in_the_table() -> None:
    row = summarize(outcome("bench", None), SloTarget())
    assert row["energy_j"] is None
    assert row["energy_per_output_token_j"] is None
    assert row["avg_power_w"] is None
    add_savings([row])
    assert row["energy_savings_vs_first"] is None
    table = format_table([row])  # used to raise TypeError (None / 1e3)
    cells = table_cells(table)
    for label in ("energy (kJ)", "savings vs first", "J / output token", "avg power / GPU (W)"):
        assert cells[label] == ["-"], label
    # The rest of the report is still there.
    assert cells["requests"] == ["3"] and cells["rejected"] == ["1"]
    assert cells["TTFT p50/p90/p99 (ms)"][0].startswith("150/")
    assert "nan" not in table


def test_every_row_tolerates_none() -> None:
    row = summarize(outcome("x", None), SloTarget())
    blank = {key: (value if key == "policy" else None) for key, value in row.items()}
    cells = table_cells(format_table([blank]))
    assert len(cells) == 17
    assert all(values == ["-"] for values in cells.values()), cells


def test_savings_against_a_baseline_of_unknown_energy_are_unknown() -> None:
    rows = [summarize(outcome(p, e), SloTarget()) for p, e in [("a", None), ("b", 5000.0)]]
    add_savings(rows)
    assert [row["energy_savings_vs_first"] for row in rows] == [None, None]
    assert table_cells(format_table(rows))["energy (kJ)"] == ["-", "5.0"]
