"""`voltana model` end to end: one clock, a clock sweep, prefill, JSON output, custom configs."""

from __future__ import annotations

import argparse
import json
from pathlib import Path
from typing import Any

import pytest

from voltana.cli.main import build_parser, main
from voltana.hardware import GPU_CATALOG, MODEL_CATALOG, get_gpu, get_model
from voltana.perf.analytical import AnalyticalPerformanceModel

pytestmark = pytest.mark.e2e

ROW_KEYS = {"clock_mhz", "latency_ms", "power_w", "energy_per_token_j"}

LLAMA_8B_CONFIG = {
    "hidden_size": 4096,
    "intermediate_size": 14336,
    "max_position_embeddings": 131072,
    "num_attention_heads": 32,
    "num_hidden_layers": 32,
    "num_key_value_heads": 8,
    "torch_dtype": "bfloat16",
    "vocab_size": 128256,
}


def run_cli(capsys: pytest.CaptureFixture[str], *args: str) -> tuple[int, str, list[str]]:
    code = main(["model", *args])
    captured = capsys.readouterr()
    return code, captured.out, [line for line in captured.err.splitlines() if line.strip()]


def json_rows(capsys: pytest.CaptureFixture[str], *args: str) -> dict[str, Any]:
    code, stdout, _ = run_cli(capsys, *args, "--json", "-")
    assert code == 0
    document: dict[str, Any] = json.loads(stdout)
    for row in document["rows"]:
        assert set(row) >= ROW_KEYS
    return document


def test_default_is_one_decode_row_at_the_default_clock(capsys: pytest.CaptureFixture[str]) -> None:
    document = json_rows(capsys)
    assert document["gpu"] == "h100-80g"
    assert document["phase"] == "decode"
    (row,) = document["rows"]
    assert row["clock_mhz"] == 1980
    perf = AnalyticalPerformanceModel.for_hardware(get_gpu("h100-80g"), get_model("llama-3.1-8b"))
    expected = perf.decode_iteration(64, 64 * 1024, 1980)
    assert row["latency_ms"] == pytest.approx(expected.latency_s * 1e3)
    assert row["power_w"] == pytest.approx(expected.power_w)
    assert row["energy_per_token_j"] == pytest.approx(expected.energy_j / 64)


def test_clock_flag_picks_the_clock(capsys: pytest.CaptureFixture[str]) -> None:
    document = json_rows(capsys, "--gpu", "a100-80g", "--clock-mhz", "1005", "--batch", "8")
    (row,) = document["rows"]
    assert row["clock_mhz"] == 1005
    assert document["batch"] == 8
    assert row["energy_optimal"] is False


def test_sweep_has_one_row_per_supported_clock_and_one_energy_optimum(
    capsys: pytest.CaptureFixture[str],
) -> None:
    document = json_rows(capsys, "--gpu", "h100-80g", "--sweep-clocks", "--batch", "64")
    rows = document["rows"]
    assert [row["clock_mhz"] for row in rows] == list(get_gpu("h100-80g").supported_sm_clocks_mhz)
    optimal = [row for row in rows if row["energy_optimal"]]
    assert len(optimal) == 1
    assert optimal[0]["energy_per_token_j"] == min(row["energy_per_token_j"] for row in rows)
    # Decode on H100: the optimum lies strictly inside the range (the U-curve).
    assert rows[0]["clock_mhz"] < optimal[0]["clock_mhz"] < rows[-1]["clock_mhz"]


def test_sweep_table_marks_exactly_one_row(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, _ = run_cli(capsys, "--gpu", "a100-80g", "--sweep-clocks")
    assert code == 0
    lines = stdout.splitlines()
    assert "A100" in lines[0] and "decode batch 64" in lines[0]
    data_lines = lines[2:-1]
    assert len(data_lines) == len(get_gpu("a100-80g").supported_sm_clocks_mhz)
    assert sum("energy-optimal" in line for line in data_lines) == 1
    assert sum("voltage knee" in line for line in data_lines) == 1
    assert lines[-1].startswith("voltage knee ~1080 MHz")


def test_prefill_sweep_marks_the_knee_and_an_optimum_near_it(
    capsys: pytest.CaptureFixture[str],
) -> None:
    document = json_rows(
        capsys, "--gpu", "a100-80g", "--phase", "prefill", "--tokens", "4096", "--sweep-clocks"
    )
    assert document["voltage_knee_mhz"] == 1080
    (knee,) = [row for row in document["rows"] if row["voltage_knee"]]
    assert knee["clock_mhz"] == 1080
    # Compute-bound work is cheapest near the knee (Perseus: 1065-1080 MHz on A100).
    assert 945 <= document["energy_optimal_mhz"] <= 1215
    # At the top the A100's 400 W limit holds the clock below the locked one.
    assert document["rows"][-1]["power_limited"] is True
    assert document["rows"][0]["power_limited"] is False


def test_prefill_phase_uses_the_prompt_tokens(capsys: pytest.CaptureFixture[str]) -> None:
    document = json_rows(
        capsys, "--gpu", "a100-80g", "--phase", "prefill", "--tokens", "4096", "--clock-mhz", "1410"
    )
    assert document["phase"] == "prefill"
    assert document["tokens"] == 4096
    assert document["batch"] is None
    (row,) = document["rows"]
    perf = AnalyticalPerformanceModel.for_hardware(get_gpu("a100-80g"), get_model("llama-3.1-8b"))
    expected = perf.prefill_iteration(4096, 1410)
    assert row["latency_ms"] == pytest.approx(expected.latency_s * 1e3)
    assert row["energy_per_token_j"] == pytest.approx(expected.energy_j / 4096)


def test_prefill_sweep_latency_falls_with_clock(capsys: pytest.CaptureFixture[str]) -> None:
    rows = json_rows(capsys, "--phase", "prefill", "--tokens", "2048", "--sweep-clocks")["rows"]
    latencies = [row["latency_ms"] for row in rows]
    assert latencies == sorted(latencies, reverse=True)


def test_energy_per_token_counts_every_tensor_parallel_gpu(
    capsys: pytest.CaptureFixture[str],
) -> None:
    document = json_rows(capsys, "--model", "llama-3.1-70b", "--tp", "4", "--batch", "16")
    assert document["tp"] == 4
    (row,) = document["rows"]
    assert row["energy_per_token_j"] == pytest.approx(
        row["latency_ms"] / 1e3 * row["power_w"] * 4 / 16
    )


def test_model_config_file_matches_the_catalog_model(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    config = tmp_path / "config.json"
    config.write_text(json.dumps(LLAMA_8B_CONFIG))
    custom = json_rows(capsys, "--model-config", str(config), "--clock-mhz", "1500")
    catalog = json_rows(capsys, "--model", "llama-3.1-8b", "--clock-mhz", "1500")
    assert custom["rows"] == catalog["rows"]


def test_json_to_a_file_also_prints_the_table(
    capsys: pytest.CaptureFixture[str], tmp_path: Path
) -> None:
    out = tmp_path / "rows.json"
    code, stdout, err = run_cli(capsys, "--clock-mhz", "1200", "--json", str(out))
    assert code == 0
    assert "1200" in stdout
    assert json.loads(out.read_text())["rows"][0]["clock_mhz"] == 1200
    assert any(str(out) in line for line in err)


# ---- errors -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("args", "needle"),
    [
        (["--gpu", "v100"], "unknown GPU 'v100'; valid: a100-80g, h100-80g, h200"),
        (["--model", "gpt2"], "unknown model 'gpt2'; valid: "),
        (["--gpu", "a100-80g", "--clock-mhz", "1000"], "1000 MHz is not a supported SM clock"),
        (["--model", "llama-3.1-70b"], "does not fit in one h100-80g"),
        (["--batch", "512", "--context-tokens", "100000"], "exceeds the KV cache"),
    ],
)
def test_errors_exit_2_with_one_line(
    capsys: pytest.CaptureFixture[str], args: list[str], needle: str
) -> None:
    code, stdout, err = run_cli(capsys, *args)
    assert code == 2
    assert stdout == ""
    assert len(err) == 1, err
    assert err[0].startswith("voltana model: error:")
    assert needle in err[0]


@pytest.mark.parametrize(
    ("content", "needle"),
    [
        (None, "no such file"),
        ("{oops", "not a readable JSON config"),
        (json.dumps({"hidden_size": 4096}), "missing field(s) num_hidden_layers"),
    ],
)
def test_bad_model_config_exits_2_with_one_line(
    capsys: pytest.CaptureFixture[str], tmp_path: Path, content: str | None, needle: str
) -> None:
    config = tmp_path / "config.json"
    if content is not None:
        config.write_text(content)
    code, _, err = run_cli(capsys, "--model-config", str(config))
    assert code == 2
    assert len(err) == 1, err
    assert str(config) in err[0] and needle in err[0]


def test_clock_and_sweep_are_mutually_exclusive(capsys: pytest.CaptureFixture[str]) -> None:
    with pytest.raises(SystemExit) as exit_info:
        main(["model", "--clock-mhz", "1005", "--sweep-clocks"])
    assert exit_info.value.code == 2
    assert "not allowed with" in capsys.readouterr().err


# ---- help -------------------------------------------------------------------------------------


def model_flags() -> list[argparse.Action]:
    for action in build_parser()._actions:
        if isinstance(action, argparse._SubParsersAction):
            parser: argparse.ArgumentParser = action.choices["model"]
            return [a for a in parser._actions if a.option_strings and a.dest != "help"]
    raise AssertionError("no sub-commands")


def test_help_lists_every_flag(
    capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit) as exit_info:
        main(["model", "--help"])
    assert exit_info.value.code == 0
    text = capsys.readouterr().out
    for action in model_flags():
        for option in action.option_strings:
            assert option in text
    assert "examples:" in text


def test_help_describes_every_flag() -> None:
    undocumented = [a.option_strings for a in model_flags() if not a.help]
    assert undocumented == []


def test_one_clock_reports_the_sweeps_energy_optimum_not_its_own(
    capsys: pytest.CaptureFixture[str],
) -> None:
    args = ("--gpu", "a100-80g", "--phase", "prefill", "--tokens", "2048")
    sweep = json_rows(capsys, *args, "--sweep-clocks")
    one = json_rows(capsys, *args, "--clock-mhz", "1005")
    assert sweep["energy_optimal_mhz"] != 1005  # else this test could not tell them apart
    assert one["energy_optimal_mhz"] == sweep["energy_optimal_mhz"]
    assert one["rows"][0]["energy_optimal"] is False
    at_optimum = json_rows(capsys, *args, "--clock-mhz", str(sweep["energy_optimal_mhz"]))
    assert at_optimum["rows"][0]["energy_optimal"] is True


def test_list_names_every_catalog_key(capsys: pytest.CaptureFixture[str]) -> None:
    code, stdout, err = run_cli(capsys, "--list")
    assert code == 0 and err == []
    keys = {line.split()[0] for line in stdout.splitlines() if line.startswith("  ")}
    assert keys == set(GPU_CATALOG) | set(MODEL_CATALOG)
