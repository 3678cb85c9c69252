"""docs/evaluation.md's measured tables are generated from the benchmark's JSON
(scripts/render_evaluation.py): the page in the repository is what its JSON gives."""

from __future__ import annotations

import importlib.util
import json
from pathlib import Path
from types import ModuleType

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
SCRIPT = ROOT / "scripts" / "render_evaluation.py"


def _renderer() -> ModuleType:
    spec = importlib.util.spec_from_file_location("render_evaluation", SCRIPT)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_the_page_is_what_its_json_gives() -> None:
    render = _renderer()
    data = sorted((ROOT / "docs" / "data").glob("evaluation-*.json"))
    assert data, "docs/data/evaluation-*.json: the benchmark output the page is made from"
    assert render.main(["--check"]) == 0, "run scripts/render_evaluation.py"


def _result(policy: str, saved: float, slo: float) -> dict[str, object]:
    return {"policy": policy, "energy_savings_vs_first": saved, "slo_attainment": slo}


def test_a_section_is_rewritten_between_its_markers_and_nothing_else(tmp_path: Path) -> None:
    render = _renderer()
    page = (
        "# Title\nprose stays\n<!-- BEGIN generated:live (from x.json) -->\nold figures\n"
        "<!-- END generated:live -->\nmore prose\n"
    )
    live = {
        "rows": [
            {
                "workload": "azure-conv",
                "policy": "voltana",
                "offline": {"slo_attainment": 1.0, "energy_j": 1000.0},
                "live": {"slo_attainment": 0.99, "energy_j": 1010.0},
            }
        ]
    }
    rendered = render.render_page(page, {"live": live})
    assert "old figures" not in rendered
    assert rendered.startswith("# Title\nprose stays\n") and rendered.endswith("more prose\n")
    assert "| azure-conv | voltana | 100.00 / 99.00 | 1.0 / 1.0 | +1.0% |" in rendered
    # A page without the section is an error, not a silent no-op.
    with pytest.raises(SystemExit):
        render.render_page("no markers\n", {"live": live})
    path = tmp_path / "live.json"
    path.write_text(json.dumps(live))
    assert json.loads(path.read_text()) == live
