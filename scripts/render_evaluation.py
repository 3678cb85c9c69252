#!/usr/bin/env python3
"""Regenerate the measured sections of docs/evaluation.md from the benchmark's JSON.

    python scripts/render_evaluation.py [--dev docs/data/evaluation-dev.json]
        [--test docs/data/evaluation-test.json] [--live docs/data/evaluation-live.json]
        [--unified docs/data/evaluation-unified.json] [--check]

Each figure table of the page sits between `<!-- BEGIN generated:NAME -->` and
`<!-- END generated:NAME -->` markers (NAME: dev, test, live, unified) and is rewritten from the JSON that
`bench/energy.py --json` wrote; the prose around them is kept. No figure is copied by hand.
--check exits 1 when the page differs from what the JSON gives (the tests run it).
"""

from __future__ import annotations

import argparse
import json
import re
import sys
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parent.parent
PAGE = ROOT / "docs" / "evaluation.md"
DATA = ROOT / "docs" / "data"
SAME_ROUTER_FIXED = ("static-best+voltana-router", "static-best")
PAPER_PREFIX = "voltana-paper"


def _result(row: dict[str, Any], policy: str) -> dict[str, Any] | None:
    for result in row.get("results", []):
        name = result["policy"]
        if name == policy or name.startswith(f"{policy}("):
            return dict(result)
    return None


def _fixed(row: dict[str, Any]) -> dict[str, Any] | None:
    for name in SAME_ROUTER_FIXED:
        found = _result(row, name)
        if found is not None:
            return found
    return None


def _cell(result: dict[str, Any] | None) -> str:
    if result is None:
        return "-"
    saved = result.get("energy_savings_vs_first")
    saved_text = "-" if saved is None else f"{100 * saved:.1f}%"
    return f"{saved_text} / {100 * result['slo_attainment']:.2f}"


def _bar(row: dict[str, Any]) -> float:
    baseline = _result(row, "static-max")
    assert baseline is not None
    return float(min(0.99, baseline["slo_attainment"] - 0.005))


def _strongest_paper(row: dict[str, Any]) -> dict[str, Any] | None:
    bar = _bar(row)
    qualified = [
        r
        for r in row.get("results", [])
        if r["policy"].startswith(PAPER_PREFIX) and r["slo_attainment"] >= bar
    ]
    return max(qualified, key=lambda r: r["energy_savings_vs_first"], default=None)


def _points(a: dict[str, Any] | None, b: dict[str, Any] | None) -> str:
    if a is None or b is None:
        return "n/a"
    return f"{100 * (a['energy_savings_vs_first'] - b['energy_savings_vs_first']):+.1f}"


def _changes(result: dict[str, Any] | None, gpus: int | None) -> str:
    if result is None:
        return "-"
    per_minute = result.get(
        "clock_changes_per_gpu_per_min", result.get("clock_changes_per_gpu_minute")
    )
    if per_minute is None and gpus and result.get("duration_s") and "clock_changes" in result:
        per_minute = result["clock_changes"] / gpus / (result["duration_s"] / 60.0)
    return "-" if per_minute is None else f"{per_minute:.0f}"


def _table(header: Sequence[str], lines: Sequence[Sequence[str]]) -> str:
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out.extend("| " + " | ".join(line) + " |" for line in lines)
    return "\n".join(out)


def render_dev(document: dict[str, Any]) -> str:
    header = (
        "workload", "hardware", "load (x rate)", "static-max SLO", "static-best (same router)",
        "strongest qualified paper ablation", "voltana", "gain vs fixed (pts)",
        "lead vs paper (pts)", "changes/GPU/min",
    )  # fmt: skip
    lines = []
    for row in document["rows"]:
        baseline = _result(row, "static-max")
        assert baseline is not None
        load = f"{row['load']} (x{row['multiplier']:.3g})"
        if not row["feasible"]:
            lines.append(
                [row["workload"], row["hardware"], load,
                 f"{100 * baseline['slo_attainment']:.2f}", "infeasible", "", "", "", "", ""]
            )  # fmt: skip
            continue
        voltana, fixed, paper = _result(row, "voltana"), _fixed(row), _strongest_paper(row)
        paper_text = "none meets the bar" if paper is None else f"{paper['policy']} {_cell(paper)}"
        gpus = row.get("gpus")
        lines.append(
            [row["workload"], row["hardware"], load, f"{100 * baseline['slo_attainment']:.2f}",
             _cell(fixed), paper_text, _cell(voltana), _points(voltana, fixed),
             _points(voltana, paper), _changes(voltana, gpus)]
        )  # fmt: skip
    state = "" if document.get("complete", True) else " (incomplete run: rows finished so far)"
    return (
        f"Saved vs static-max / SLO attainment (%), {len(document['rows'])} rows{state}:\n\n"
        + _table(header, lines)
    )


def render_test(document: dict[str, Any]) -> str:
    from voltana.sim.heldout import format_split_summary

    summary = format_split_summary(document["summary"], SAME_ROUTER_FIXED[0])
    header = (
        "row", "family", "hardware", "SLO (TTFT / ITL ms)", "load", "static-best (same router)",
        "strongest qualified paper ablation", "voltana", "gain vs fixed (pts)",
        "lead vs paper (pts)",
    )  # fmt: skip
    lines = []
    for entry in document["rows"]:
        case = entry["case"]
        slo = case["slo"]
        per_1k = f"+{slo['ttft_ms_per_1k_tokens']:.0f}/1k" if slo["ttft_ms_per_1k_tokens"] else ""
        target = f"{slo['ttft_ms']:.0f}{per_1k} / {slo['itl_ms']:g}"
        load = f"{100 * case['load_fraction']:.0f}%"
        row = entry["row"]
        if not entry["feasible"] or row is None:
            lines.append(
                [f"{case['index']}", case["family"], case["hardware"], target, load,
                 "infeasible", "", "", "", ""]
            )  # fmt: skip
            continue
        voltana, fixed, paper = _result(row, "voltana"), _fixed(row), _strongest_paper(row)
        paper_text = "none meets the bar" if paper is None else f"{paper['policy']} {_cell(paper)}"
        lines.append(
            [f"{case['index']}", case["family"], case["hardware"], target, load, _cell(fixed),
             paper_text, _cell(voltana), _points(voltana, fixed), _points(voltana, paper)]
        )  # fmt: skip
    state = "" if document.get("complete", True) else " (incomplete run: rows finished so far)"
    return (
        f"Seed {document['seed']}{state}:\n\n"
        + "\n".join(f"- {line}" for line in summary.splitlines())
        + "\n\n"
        + _table(header, lines)
    )


def render_live(document: dict[str, Any]) -> str:
    header = ("workload", "policy", "SLO offline / live", "energy offline / live (kJ)", "Δ energy")
    lines = []
    for entry in document["rows"]:
        offline, live = entry["offline"], entry["live"]
        energy_off, energy_live = offline.get("energy_j"), live.get("energy_j")
        delta = (
            f"{100 * (energy_live / energy_off - 1):+.1f}%" if energy_off and energy_live else "-"
        )
        lines.append(
            [
                entry["workload"],
                entry["policy"],
                f"{100 * offline['slo_attainment']:.2f} / {100 * live['slo_attainment']:.2f}",
                f"{(energy_off or 0) / 1e3:.1f} / {(energy_live or 0) / 1e3:.1f}",
                delta,
            ]
        )
    return _table(header, lines)


RENDERERS: dict[str, Callable[[dict[str, Any]], str]] = {
    "dev": render_dev,
    "test": render_test,
    "live": render_live,
    # The development matrix on colocated instances (bench/energy.py --unified N).
    "unified": render_dev,
}


def render_page(page: str, documents: dict[str, dict[str, Any]]) -> str:
    for name, document in documents.items():
        pattern = re.compile(
            rf"(<!-- BEGIN generated:{name} [^>]*-->\n)(.*?)(<!-- END generated:{name} -->)",
            re.DOTALL,
        )
        if not pattern.search(page):
            raise SystemExit(f"render_evaluation: no generated:{name} section in {PAGE}")
        body = RENDERERS[name](document)
        page = pattern.sub(lambda m, body=body: m.group(1) + body + "\n" + m.group(3), page)
    return page


def main(argv: Sequence[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    for name in RENDERERS:
        parser.add_argument(
            f"--{name}", type=Path, default=DATA / f"evaluation-{name}.json", metavar="JSON"
        )
    parser.add_argument("--page", type=Path, default=PAGE)
    parser.add_argument("--check", action="store_true", help="fail when the page is stale")
    args = parser.parse_args(argv)
    documents = {}
    for name in RENDERERS:
        path: Path = getattr(args, name)
        if path.exists():
            documents[name] = json.loads(path.read_text())
    page = args.page.read_text()
    rendered = render_page(page, documents)
    if args.check:
        if rendered != page:
            print(f"{args.page} is stale: run scripts/render_evaluation.py", file=sys.stderr)
            return 1
        return 0
    args.page.write_text(rendered)
    return 0


if __name__ == "__main__":
    sys.exit(main())
