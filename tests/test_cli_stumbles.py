"""Every newcomer stumble of issue 10, reproduced: bad input ends with exit code 2 and one line on
stderr (no traceback, no usage block), before any long run; `-` means stdout; shipped traces."""

from __future__ import annotations

import json
import logging
import sys
from pathlib import Path

import pytest
from security_helpers import SECURITY

from voltana.cli.main import START_HERE, build_parser, main
from voltana.cli.outputs import PLOT_FORMATS
from voltana.services.telemetry import TelemetryService, TelemetrySettings
from voltana.workloads import SHIPPED_TRACES, load_workload

pytestmark = pytest.mark.e2e


def run_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    try:
        code = main(list(argv))
    except SystemExit as exit_:  # argparse
        code = int(exit_.code or 0)
    captured = capsys.readouterr()
    return code, captured.out, captured.err


def assert_one_line_error(code: int, err: str, *needles: str) -> str:
    lines = err.strip().splitlines()
    assert code == 2, err
    assert len(lines) == 1, err
    for needle in needles:
        assert needle in lines[0], lines[0]
    return lines[0]


@pytest.mark.parametrize(
    ("argv", "needle"),
    [
        (("simulate", "--rate-scale", "-1"), "--rate-scale"),
        (("simulate", "--max-requests", "0"), "--max-requests"),
        (("simulate", "--prefill", "abc"), "--prefill"),
        (("model", "--batch", "0"), "--batch"),
        (("up", "--sim", "--speedup", "0"), "--speedup"),
        (("bench", "--target", "nowhere", "--trace", "azure-conv"), "--target"),
        (("serve", "router", "--metrics-port", "70000"), "--metrics-port"),
        (("serve", "router", "--http-header-timeout-s", "0"), "--http-header-timeout-s"),
        (("serve", "router", "--http-max-connections-per-client", "-1"), "--http-max-conn"),
        (("simulate", "--no-such-flag"), "--no-such-flag"),
    ],
)
def test_flag_errors_are_one_line_not_the_usage_block(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], needle: str
) -> None:
    code, out, err = run_cli(capsys, *argv)
    line = assert_one_line_error(code, err, needle)
    assert "usage:" not in err and line.startswith("voltana")
    assert out == ""


def test_a_plot_path_matplotlib_cannot_write_fails_before_the_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    code, out, err = run_cli(capsys, "simulate", "--plot", str(tmp_path / "out.txt"))
    assert_one_line_error(code, err, "--plot", "out.txt", ".png")
    assert out == ""  # nothing ran: no workload line, no table


def test_plot_without_matplotlib_names_the_extra_before_the_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    # matplotlib is the optional `plot` extra; None in sys.modules is how Python spells
    # "not installed" to the import system.
    monkeypatch.setitem(sys.modules, "matplotlib", None)
    code, out, err = run_cli(capsys, "simulate", "--plot", str(tmp_path / "out.png"))
    assert_one_line_error(code, err, "--plot", "matplotlib", "voltana[plot]")
    assert out == ""
    assert not (tmp_path / "out.png").exists()


@pytest.mark.parametrize("flag", ["--json", "--plot"])
def test_output_paths_are_checked_before_the_run(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, flag: str
) -> None:
    missing = tmp_path / "no-such-folder" / "out.png"
    code, out, err = run_cli(capsys, "simulate", flag, str(missing))
    assert_one_line_error(code, err, flag, "does not exist")
    assert out == ""
    code, _, err = run_cli(capsys, "simulate", flag, str(tmp_path))
    assert_one_line_error(code, err, flag, "directory")
    code, _, err = run_cli(capsys, "model", "--json", str(missing.with_suffix(".json")))
    assert_one_line_error(code, err, "--json")


def test_json_dash_means_stdout_and_the_table_goes_to_stderr(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.chdir(tmp_path)
    code, out, err = run_cli(capsys, "simulate", "--json", "-", "--max-requests", "20", "--quiet")
    assert code == 0, err
    document = json.loads(out)
    assert document["results"][0]["requests"] == 20
    assert "SLO attainment" in err
    assert not (tmp_path / "-").exists()


def test_a_binary_model_config_is_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    binary = tmp_path / "config.json"
    binary.write_bytes(bytes(range(256)) * 4)
    code, _, err = run_cli(capsys, "simulate", "--model-config", str(binary))
    assert_one_line_error(code, err, "config.json", "not a text")


def test_a_redis_url_that_is_no_url_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "up", "--sim", "--redis-url", "notaurl")
    assert_one_line_error(code, err, "notaurl")


def test_static_best_in_a_live_stack_says_it_is_simulator_only(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, _, err = run_cli(capsys, "up", "--sim", "--policy", "static-best")
    line = assert_one_line_error(code, err, "static-best", "voltana simulate")
    assert "valid: static-best" not in line and "live policies:" in line
    assert "static-best" not in line.split("live policies:")[1]


@pytest.mark.parametrize(
    ("argv", "needles"),
    [
        (("model", "--phase", "prefill", "--tokens", "99999999"), ("--tokens", "context")),
        (("model", "--context-tokens", "99999999"), ("--context-tokens", "context")),
        (("model", "--tp", "3"), ("TP 3", "valid TP degrees: 1, 2, 4, 8")),
        (("simulate", "--tp", "3", "--max-requests", "5"), ("TP 3",)),
        (("up", "--sim", "--tp", "3"), ("TP 3",)),
    ],
)
def test_impossible_sizes_are_one_line(
    capsys: pytest.CaptureFixture[str], argv: tuple[str, ...], needles: tuple[str, ...]
) -> None:
    code, out, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, *needles)
    assert out == ""


def test_a_missing_trace_names_the_shipped_ones(capsys: pytest.CaptureFixture[str]) -> None:
    code, _, err = run_cli(capsys, "simulate", "--trace", "no-such-trace.csv")
    assert_one_line_error(code, err, "no such file", "azure-conv", "azure-code")


@pytest.mark.unit
def test_shipped_traces_load_by_name_and_by_path() -> None:
    data = Path(__file__).resolve().parent.parent / "voltana" / "data"
    counts = {"azure-conv": 19_366, "azure-code": 8_819, "azure-conv-10min": 2_867}
    assert set(SHIPPED_TRACES) == set(counts)
    for name, file_name in SHIPPED_TRACES.items():
        by_name = load_workload(name)
        by_path = load_workload(data / file_name)
        assert len(by_name) == counts[name] == len(by_path)
        assert by_name[0].arrival_s == 0.0 and by_name == by_path
    # The 10-minute slice is the start of the whole conversation trace.
    whole = load_workload("azure-conv", duration_s=600.0)
    assert [(r.input_tokens, r.output_tokens) for r in whole] == [
        (r.input_tokens, r.output_tokens) for r in load_workload("azure-conv-10min")
    ]
    assert "CC-BY 4.0" in (data / "README.md").read_text()


@pytest.mark.unit
def test_plot_formats_are_what_matplotlib_writes() -> None:
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib.figure import Figure

    assert set(PLOT_FORMATS) <= set(Figure().canvas.get_supported_filetypes())


@pytest.mark.integration
async def test_telemetry_logs_its_address(caplog: pytest.LogCaptureFixture) -> None:
    caplog.set_level(logging.INFO, logger="voltana.services.telemetry")
    settings = TelemetrySettings(listen_address="127.0.0.1:0", security=SECURITY)
    async with TelemetryService(settings) as telemetry:
        address = telemetry.address
    assert any(address in record.getMessage() for record in caplog.records)


def test_the_top_level_help_says_where_to_start_and_its_commands_parse(
    capsys: pytest.CaptureFixture[str],
) -> None:
    code, out, _ = run_cli(capsys, "--help")
    assert code == 0 and "start here" in out and "voltana up --sim" in out
    commands = START_HERE.replace("\\\n", " ").splitlines()
    examples = [line.split("#")[0].split()[1:] for line in commands if line.startswith("  voltana")]
    assert len(examples) == 4
    for argv in examples:
        args = build_parser().parse_args(argv)  # SystemExit (exit code 2) on a stale flag
        assert args.command == argv[0]


def test_an_extrapolated_static_clock_needs_the_opt_in_and_is_marked(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    trace = "synthetic:poisson:rate=2,duration=5,seed=1"
    argv = ("simulate", "--trace", trace, "--quiet", "--policy", "static:1050/240")
    code, _, err = run_cli(capsys, *argv)
    assert_one_line_error(code, err, "240 MHz", "855-1410", "--allow-extrapolated-clocks")
    out = tmp_path / "out.json"
    code, table, err = run_cli(capsys, *argv, "--allow-extrapolated-clocks", "--json", str(out))
    assert code == 0, err
    assert "static:1050/240*" in table and "extrapolated" in table
    (row,) = json.loads(out.read_text())["results"]
    assert row["extrapolated_energy_share"] > 0.3
    assert set(row["clock_residency_s"]["decode"]) == {"1410", "240"}
    code, _, err = run_cli(
        capsys, "simulate", "--trace", trace, "--policy", "static-best+full-range"
    )
    assert_one_line_error(code, err, "static-best takes only a router modifier")
