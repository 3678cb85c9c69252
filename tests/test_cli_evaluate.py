"""`voltana evaluate`: capacity, loads, rows, infeasible loads, one-line errors."""

from __future__ import annotations

import io
import json
from pathlib import Path

import pytest

from voltana.cli.main import main
from voltana.cli.progress import RowProgress
from voltana.sim.evaluate import HARDWARE, REFERENCE, Row, workloads

pytestmark = pytest.mark.e2e

SMALL = "synthetic:poisson:rate=5,duration=10,input=300,output=60,seed=2"


def test_evaluate_finds_the_capacity_and_reports_each_load(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    out = tmp_path / "eval.json"
    code = main(
        [
            "evaluate", "--trace", SMALL, "--loads", "light,heavy",
            "--policy", "static-max", "--policy", "static:1005", "--json", str(out),
        ]
    )  # fmt: skip
    assert code == 0
    document = json.loads(out.read_text())
    capacity = document["config"]["capacity_multiplier"]
    assert capacity > 1.0  # a light synthetic stream: the cluster takes several times more
    rows = document["rows"]
    assert [row["load"] for row in rows] == ["light", "heavy"]
    assert rows[0]["multiplier"] == pytest.approx(0.3 * capacity)
    assert rows[1]["multiplier"] == pytest.approx(0.9 * capacity)
    for row in rows:
        assert row["feasible"] is True  # below capacity, static-max meets 99 %
        assert [r["policy"] for r in row["results"]] == ["static-max", "static:1005"]
    assert "static:1005" in capsys.readouterr().out


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--loads", "extreme"], "unknown level"),
        (["--policy", "voltana-paper+warp-drive"], "unknown modifier"),
        (["--trace", "/nonexistent.csv"], "nonexistent"),
    ],
)
def test_bad_input_is_one_line_and_exit_2(
    args: list[str], message: str, capsys: pytest.CaptureFixture[str]
) -> None:
    assert main(["evaluate", "--trace", SMALL, *args]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and message in err[0]


@pytest.mark.unit
def test_slower_hardware_gets_a_longer_ttft_target_never_a_shorter_one() -> None:
    slo = workloads()["azure-conv"].slo
    assert REFERENCE.slo(slo) == slo
    by_label = {h.label: h.slo(slo) for h in HARDWARE}
    assert by_label["h100-80g llama-3.1-8b"].ttft_ms == slo.ttft_ms
    assert by_label["a100-80g qwen3-32b TP2"].ttft_ms > 1.5 * slo.ttft_ms
    assert all(s.itl_ms == slo.itl_ms for s in by_label.values())


@pytest.mark.unit
def test_a_row_where_the_baseline_misses_is_infeasible_and_verdicts_compare_like_with_like() -> (
    None
):
    def result(policy: str, slo: float, saved: float) -> dict[str, object]:
        return {
            "policy": policy,
            "slo_attainment": slo,
            "energy_j": 100.0 * (1 - saved),
            "energy_savings_vs_first": saved,
        }

    missing = Row("w", "hw", "heavy", 1.0, 10, [result("static-max", 0.95, 0.0)])
    assert not missing.feasible
    row = Row(
        "w",
        "hw",
        "light",
        1.0,
        10,
        [
            result("static-max", 1.0, 0.0),
            result("static-best(1005/870)", 0.995, 0.30),
            result("voltana-paper", 1.0, 0.20),
            result("voltana-paper+full-range", 0.90, 0.40),  # misses the bar: not a rival
            result("voltana", 0.996, 0.35),
        ],
    )
    verdict = row.verdict()
    assert verdict["slo_ok"] and verdict["beats_static_best"]
    assert verdict["strongest_ablation"] == "voltana-paper"
    assert verdict["lead_points"] == pytest.approx(15.0)


class FakeClock:
    def __init__(self) -> None:
        self.now_s = 0.0

    def __call__(self) -> float:
        return self.now_s


@pytest.mark.unit
def test_row_progress_lines_are_spaced_and_carry_an_eta_from_the_last_rows_step_times() -> None:
    clock, out = FakeClock(), io.StringIO()
    progress = RowProgress(2, out, interval_s=5.0, clock=clock)
    progress.start_row("light:", ["a", "b"])
    update_a = progress.step("a")
    clock.now_s = 10.0
    update_a(0.5)  # a quarter of row 1 (equal shares), an eighth of the work, in 10 s
    clock.now_s = 12.0
    update_a(0.6)  # within 5 s of the last line: no line
    (line,) = out.getvalue().splitlines()
    assert "light: row 1/2, step 1/2: a 50%" in line and "10s elapsed, ETA 1m10s" in line
    clock.now_s = 30.0
    progress.step("b")
    clock.now_s = 40.0
    progress.end_row()  # a took 30 s, b 10 s
    assert out.getvalue().splitlines()[-1].endswith("row 1/2 done; 40s elapsed, ETA 40s")
    progress.start_row("heavy:", ["a", "b"])
    update_a = progress.step("a")
    clock.now_s = 55.0
    update_a(0.5)  # 15 of row 2's expected 40 s: 1.375 of 2 rows done in 55 s
    assert progress.row_fraction(0, 0.5) == pytest.approx(15 / 40)
    assert out.getvalue().splitlines()[-1].endswith("55s elapsed, ETA 25s")


def test_evaluate_reports_progress_with_an_eta_and_its_help_the_run_time(
    capsys: pytest.CaptureFixture[str],
) -> None:
    argv = ["evaluate", "--trace", SMALL, "--loads", "light,heavy"]
    assert main([*argv, "--policy", "static-max", "--policy", "static:1005"]) == 0
    err = capsys.readouterr().err
    assert "x1 the trace's rate:" in err  # each capacity probe
    assert "row 1/2 done;" in err and "row 2/2 done;" in err and "ETA" in err
    with pytest.raises(SystemExit):
        main(["evaluate", "--help"])
    assert "minutes" in capsys.readouterr().out
