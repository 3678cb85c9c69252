"""bench/load_generators.py without its tools: the tokenizer it writes counts tokens the way the
simulated engines do, the verdict compares medians within the tolerance, and a missing tool
stops it in one line with exit code 2."""

from __future__ import annotations

import importlib.util
import json
import re
import sys
from pathlib import Path
from types import ModuleType

import pytest

from voltana.engine.tokenizer import count_text_tokens

pytestmark = pytest.mark.unit

SCRIPT = Path(__file__).resolve().parent.parent / "bench" / "load_generators.py"


@pytest.fixture(scope="module")
def loadgen() -> ModuleType:
    spec = importlib.util.spec_from_file_location("load_generators", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


def test_the_tokenizer_counts_tokens_as_the_simulated_engines_do(
    loadgen: ModuleType, tmp_path: Path
) -> None:
    folder = loadgen.write_tokenizer(tmp_path / "tok")
    document = json.loads((folder / "tokenizer.json").read_text())
    config = json.loads((folder / "tokenizer_config.json").read_text())
    assert config["tokenizer_class"] == "PreTrainedTokenizerFast"
    pre = document["pre_tokenizer"]
    assert pre["type"] == "Split" and pre["invert"] and pre["behavior"] == "Removed"
    pattern = re.compile(pre["pattern"]["Regex"])
    # Encoding: the pieces the pre-tokenizer keeps are the engine's tokens, one id each
    # (unknown pieces are <u>, still one token).
    for text in ("Hello world, voltana serves   language-models!", "a\\nbb ccc dddd eeeee", " x "):
        assert len(pattern.findall(text)) == count_text_tokens(text)
    # Decoding (word level, no decoder): ids joined by spaces; every vocabulary entry is 1-4
    # characters without whitespace, so N ids decode to a prompt of N engine tokens.
    vocab = document["model"]["vocab"]
    assert sorted(vocab.values()) == list(range(len(vocab)))
    assert all(1 <= len(token) <= 4 and not token.split()[1:] for token in vocab)
    assert count_text_tokens(" ".join(list(vocab) * 3)) == 3 * len(vocab)
    assert document["model"]["unk_token"] in vocab


def run(name: str, **medians: float) -> object:
    import load_generators as module

    tool = module.ToolRun(name, "x", [], sent=10, completed=10)
    tool.stats = {metric: {"mean": v, "p50": v, "p99": v} for metric, v in medians.items()}
    return tool


def test_the_verdict_compares_medians_within_the_tolerance(loadgen: ModuleType) -> None:
    reference = run("voltana bench", ttft=50.0, itl=10.0, tpot=10.0)
    close = run("bench_serving", ttft=54.0, itl=9.5, tpot=10.4)
    far = run("aiperf", ttft=56.0, itl=10.0, tpot=10.0)
    assert loadgen.verdict([reference, close], 0.10) == (True, [])
    passed, failures = loadgen.verdict([reference, close, far], 0.10)
    assert not passed and failures == ["aiperf: TTFT p50 is 1.120x voltana bench's (beyond +/-10%)"]
    far.problems.append("aiperf completed 9 of 10 requests")
    assert "aiperf completed 9 of 10 requests" in loadgen.verdict([reference, far], 0.2)[1]
    missing = run("aiperf", ttft=50.0, itl=10.0)
    assert loadgen.verdict([reference, missing], 0.1)[1] == ["aiperf: no mean ITL per request p50"]
    text = loadgen.table([reference, close])
    assert "TTFT p50 (ms)" in text and "54.00 (1.080x)" in text


def test_a_missing_tool_is_one_line_and_exit_code_2(
    loadgen: ModuleType, tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    code = loadgen.main(["--skip", "bench_serving", "--aiperf", str(tmp_path / "no-aiperf")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and err.startswith("error: aiperf is not installed")
    code = loadgen.main(["--skip", "aiperf", "--sglang-python", str(tmp_path / "python")])
    assert code == 2
    err = capsys.readouterr().err.strip()
    assert len(err.splitlines()) == 1 and "bench_serving needs the real sglang" in err


def test_help_names_every_option(capsys: pytest.CaptureFixture[str], loadgen: ModuleType) -> None:
    with pytest.raises(SystemExit) as done:
        loadgen.main(["--help"])
    assert done.value.code == 0
    out = capsys.readouterr().out
    for option in ("--requests", "--rounds", "--rate", "--input-tokens", "--output-tokens", "--json",
                   "--sglang-python", "--aiperf", "--skip", "--tolerance"):  # fmt: skip
        assert option in out


def test_rounds_combine_into_sums_and_medians(loadgen: ModuleType) -> None:
    first = run("aiperf", ttft=50.0, itl=10.0, tpot=10.0)
    second = run("aiperf", ttft=60.0, itl=11.0, tpot=12.0)
    second.errors, second.completed = 1, 9
    second.problems.append("aiperf saw 1 failed requests")
    combined = loadgen.combine([first, second])
    assert (combined.sent, combined.completed, combined.errors) == (20, 19, 1)
    assert combined.stats["ttft"]["p50"] == 55.0 and combined.stats["tpot"]["p99"] == 11.0
    assert combined.problems == ["aiperf saw 1 failed requests"]
    assert [r["completed"] for r in combined.to_dict()["rounds"]] == [10, 9]
    assert loadgen.combine([first]).stats == first.stats
