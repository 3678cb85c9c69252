"""`voltana simulate` end to end: in-process through ``main`` and once as a real subprocess."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from voltana.cli.main import build_parser, main

pytestmark = pytest.mark.e2e

RESULT_KEYS = {
    "policy",
    "requests",
    "completed",
    "rejected",
    "energy_j",
    "energy_per_output_token_j",
    "avg_power_w",
    "duration_s",
    "ttft_ms",
    "itl_ms",
    "ttft_attainment",
    "itl_attainment",
    "slo_attainment",
    "energy_savings_vs_first",
}
PERCENTILE_KEYS = {"p50", "p90", "p99"}
FRACTION_KEYS = ("ttft_attainment", "itl_attainment", "slo_attainment")
TWO_POLICIES = ["--policy", "static-max", "--policy", "static:1005"]

# (seconds after the first request, input tokens, output tokens)
SMALL_TRACE = [(0.4 * n, 200 + 97 * (n % 13), 20 + 11 * (n % 7)) for n in range(24)]


def write_azure(path: Path, rows: list[tuple[float, int, int]] = SMALL_TRACE) -> Path:
    lines = ["TIMESTAMP,ContextTokens,GeneratedTokens"]
    for offset_s, inputs, outputs in rows:
        whole, fraction = divmod(offset_s, 1.0)
        stamp = f"2023-11-16 18:{15 + int(whole) // 60:02d}:{int(whole) % 60:02d}"
        lines.append(f"{stamp}.{round(fraction * 1e7):07d},{inputs},{outputs}")
    path.write_text("\n".join(lines) + "\n")
    return path


def write_mooncake(path: Path, rows: list[tuple[float, int, int]] = SMALL_TRACE) -> Path:
    lines = [
        json.dumps(
            {
                "timestamp": 1_000 + offset_s * 1e3,
                "input_length": inputs,
                "output_length": outputs,
                "hash_ids": [n, n + 1],
            }
        )
        for n, (offset_s, inputs, outputs) in enumerate(rows)
    ]
    path.write_text("\n".join(lines) + "\n")
    return path


@pytest.fixture
def azure_trace(tmp_path: Path) -> Path:
    return write_azure(tmp_path / "small_azure.csv")


@pytest.fixture
def mooncake_trace(tmp_path: Path) -> Path:
    return write_mooncake(tmp_path / "small_mooncake.jsonl")


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, list[str]]:
    """Exit code, stdout, and the non-empty stderr lines of one in-process run."""
    code = main(list(args))
    captured = capsys.readouterr()
    return code, captured.out, [line for line in captured.err.splitlines() if line.strip()]


def check_results_document(document: dict[str, Any], policies: list[str], requests: int) -> None:
    assert set(document) >= {"config", "results"}
    assert isinstance(document["config"], dict)
    results = document["results"]
    assert [row["policy"] for row in results] == policies
    for row in results:
        assert set(row) >= RESULT_KEYS, f"missing {RESULT_KEYS - set(row)}"
        assert set(row["ttft_ms"]) >= PERCENTILE_KEYS
        assert set(row["itl_ms"]) >= PERCENTILE_KEYS
        assert row["requests"] == requests
        assert row["completed"] + row["rejected"] == row["requests"]
        for key in FRACTION_KEYS:
            assert 0.0 <= row[key] <= 1.0
        assert row["slo_attainment"] <= min(row["ttft_attainment"], row["itl_attainment"])
        assert row["energy_j"] > 0 and row["avg_power_w"] > 0 and row["duration_s"] > 0
        assert row["ttft_ms"]["p50"] <= row["ttft_ms"]["p90"] <= row["ttft_ms"]["p99"]
        assert row["itl_ms"]["p50"] <= row["itl_ms"]["p90"] <= row["itl_ms"]["p99"]
    assert results[0]["energy_savings_vs_first"] == 0
    for row in results[1:]:
        expected = 1 - row["energy_j"] / results[0]["energy_j"]
        assert row["energy_savings_vs_first"] == pytest.approx(expected)


# ---- happy paths ------------------------------------------------------------------------------


def test_two_policies_print_a_table_and_write_the_documented_json(
    capsys: pytest.CaptureFixture[str], azure_trace: Path, tmp_path: Path
) -> None:
    out_json = tmp_path / "out.json"
    code, stdout, _ = run_cli(
        capsys, "simulate", "--trace", str(azure_trace), *TWO_POLICIES, "--json", str(out_json),
        "--quiet",
    )  # fmt: skip
    assert code == 0
    header = stdout.splitlines()[0].split()
    assert header == ["static-max", "static:1005"]
    for label in ("energy (kJ)", "savings vs first", "TTFT attainment", "ITL attainment"):
        assert label in stdout
    document = json.loads(out_json.read_text())
    check_results_document(document, ["static-max", "static:1005"], len(SMALL_TRACE))
    assert document["config"]["trace"] == str(azure_trace)
    assert document["config"]["gpu"] == "a100-80g"
    # A light load: the lower clock saves energy.
    assert document["results"][1]["energy_savings_vs_first"] > 0


def test_mooncake_trace_with_plot_on_h100(
    capsys: pytest.CaptureFixture[str], mooncake_trace: Path, tmp_path: Path
) -> None:
    out_png = tmp_path / "plot.png"
    out_json = tmp_path / "out.json"
    code, stdout, err = run_cli(
        capsys, "simulate", "--trace", str(mooncake_trace), "--gpu", "h100-80g",
        "--policy", "static-max", "--policy", "static:990/1980", "--router", "least-loaded",
        "--json", str(out_json), "--plot", str(out_png), "--quiet",
    )  # fmt: skip
    assert code == 0
    assert out_png.read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    assert out_png.stat().st_size > 10_000
    assert any(str(out_png) in line for line in err)
    document = json.loads(out_json.read_text())
    check_results_document(document, ["static-max", "static:990/1980"], len(SMALL_TRACE))
    assert document["config"]["router"] == "least-loaded"
    assert "static:990/1980" in stdout


def test_workload_shaping_flags_reach_the_replay(
    capsys: pytest.CaptureFixture[str], azure_trace: Path, tmp_path: Path
) -> None:
    out_json = tmp_path / "out.json"
    code, _, _ = run_cli(
        capsys, "simulate", "--trace", str(azure_trace), "--max-requests", "10",
        "--rate-scale", "2", "--prefill", "1", "--decode", "1", "--json", str(out_json), "--quiet",
    )  # fmt: skip
    assert code == 0
    document = json.loads(out_json.read_text())
    check_results_document(document, ["static-max"], 10)
    assert document["config"]["workload"]["count"] == 10
    # 10 requests 0.4 s apart, replayed twice as fast: 9 gaps of 0.2 s.
    assert document["config"]["workload"]["span_s"] == pytest.approx(1.8)


def test_synthetic_trace_runs(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    out_json = tmp_path / "out.json"
    code, _, _ = run_cli(
        capsys, "simulate", "--trace", "synthetic:poisson:rate=5,count=15,seed=3",
        "--json", str(out_json), "--quiet",
    )  # fmt: skip
    assert code == 0
    check_results_document(json.loads(out_json.read_text()), ["static-max"], 15)


def test_subprocess_run_prints_the_table(azure_trace: Path, tmp_path: Path) -> None:
    out_json = tmp_path / "out.json"
    completed = subprocess.run(
        [
            sys.executable, "-m", "voltana.cli.main", "simulate", "--trace", str(azure_trace),
            *TWO_POLICIES, "--json", str(out_json),
        ],
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "COLUMNS": "200"},
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr
    assert completed.stdout.splitlines()[0].split() == ["static-max", "static:1005"]
    # Off a terminal the progress bar prints at most a few lines per policy, never a traceback.
    assert "Traceback" not in completed.stderr
    assert "workload:" in completed.stderr
    check_results_document(
        json.loads(out_json.read_text()), ["static-max", "static:1005"], len(SMALL_TRACE)
    )


# ---- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("flag", "value", "valid"),
    [
        ("--gpu", "b200", ["a100-80g", "h100-80g", "h200"]),
        ("--model", "gpt-5", ["llama-3.1-8b", "ministral-3b"]),
    ],
)
def test_unknown_hardware_exits_2_with_one_line_naming_valid_names(
    capsys: pytest.CaptureFixture[str], azure_trace: Path, flag: str, value: str, valid: list[str]
) -> None:
    code, stdout, err = run_cli(capsys, "simulate", "--trace", str(azure_trace), flag, value)
    assert code == 2
    assert stdout == ""
    assert len(err) == 1, err
    assert err[0].startswith("voltana simulate: error:")
    assert repr(value) in err[0]
    for name in valid:
        assert name in err[0]


@pytest.mark.parametrize(
    ("args", "valid"),
    [
        (["--policy", "static-max", "--policy", "greedy"], ["static-max", "static:<MHz>"]),
        (["--router", "random"], ["least-loaded", "round-robin"]),
    ],
)
def test_unknown_policy_or_router_exits_2_naming_valid_names(
    capsys: pytest.CaptureFixture[str], azure_trace: Path, args: list[str], valid: list[str]
) -> None:
    code, stdout, err = run_cli(capsys, "simulate", "--trace", str(azure_trace), *args, "--quiet")
    assert code == 2
    assert stdout == ""
    assert not any("Traceback" in line for line in err)
    assert err[-1].startswith("voltana simulate: error: unknown")
    for name in valid:
        assert name in err[-1]


@pytest.mark.parametrize("args", [["--policy", "greedy"], ["--router", "random"]])
def test_unknown_policy_or_router_is_exactly_one_stderr_line(
    capsys: pytest.CaptureFixture[str], azure_trace: Path, args: list[str]
) -> None:
    code, _, err = run_cli(capsys, "simulate", "--trace", str(azure_trace), *args, "--quiet")
    assert code == 2
    assert len(err) == 1, err


def test_unsupported_static_clock_exits_2(
    capsys: pytest.CaptureFixture[str], azure_trace: Path
) -> None:
    code, _, err = run_cli(
        capsys, "simulate", "--trace", str(azure_trace), "--policy", "static:1000", "--quiet"
    )
    assert code == 2
    assert "1000 MHz is not a supported SM clock" in err[-1]


@pytest.mark.parametrize(
    ("writer", "bad_line", "line_number"),
    [
        (write_azure, "2023-11-16 18:16:00.0000000,many,10", 4),
        (write_mooncake, '{"timestamp": 9000, "input_length": 10', 4),
    ],
)
def test_malformed_trace_is_one_line_with_file_and_line(
    capsys: pytest.CaptureFixture[str],
    tmp_path: Path,
    writer: Any,
    bad_line: str,
    line_number: int,
) -> None:
    path: Path = writer(tmp_path / "trace.txt", SMALL_TRACE[:5])
    lines = path.read_text().splitlines()
    lines.insert(line_number - 1, bad_line)
    path.write_text("\n".join(lines) + "\n")
    code, stdout, err = run_cli(capsys, "simulate", "--trace", str(path), "--quiet")
    assert code == 2
    assert stdout == ""
    assert len(err) == 1, err
    assert f"{path}:{line_number}:" in err[0]


def test_missing_trace_file_is_one_line(capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
    missing = tmp_path / "nope.csv"
    code, _, err = run_cli(capsys, "simulate", "--trace", str(missing), "--quiet")
    assert code == 2
    assert len(err) == 1
    assert str(missing) in err[0] and "no such file" in err[0]


def test_unwritable_json_path_is_one_line(
    capsys: pytest.CaptureFixture[str], azure_trace: Path, tmp_path: Path
) -> None:
    target = tmp_path / "missing-dir" / "out.json"
    code, _, err = run_cli(
        capsys, "simulate", "--trace", str(azure_trace), "--json", str(target), "--quiet"
    )
    # Checked before the run: one line, nothing else printed.
    assert code == 2
    assert len(err) == 1
    assert err[0].startswith("voltana simulate: error: --json") and "does not exist" in err[0]


# ---- help -------------------------------------------------------------------------------------


def subcommand(name: str) -> argparse.ArgumentParser:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            parser: argparse.ArgumentParser = action.choices[name]
            return parser
    raise AssertionError("no sub-commands")


def flag_actions(parser: argparse.ArgumentParser) -> list[argparse.Action]:
    return [a for a in parser._actions if a.option_strings and a.dest != "help"]


def help_text(capsys: pytest.CaptureFixture[str], command: str) -> str:
    with pytest.raises(SystemExit) as exit_info:
        main([command, "--help"])
    assert exit_info.value.code == 0
    return capsys.readouterr().out


def test_help_lists_and_describes_every_flag(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    text = help_text(capsys, "simulate")
    actions = flag_actions(subcommand("simulate"))
    assert len(actions) >= 20
    for action in actions:
        for option in action.option_strings:
            assert option in text
        assert action.help and action.help != argparse.SUPPRESS, action.option_strings
    for flag in ("--trace", "--policy", "--router", "--json", "--plot", "--gpu", "--model-config"):
        assert flag in text
    assert "examples:" in text
