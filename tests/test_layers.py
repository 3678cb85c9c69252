"""The import-layer contract (pyproject.toml's [tool.importlinter]) holds on the tree as it is:
no lower layer imports a higher one (services never import cli or stack) and no package's
modules import each other in a circle."""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent


def test_the_layer_contract_holds() -> None:
    executable = shutil.which("lint-imports")
    assert executable, "import-linter is part of the dev extra: pip install -e '.[dev]'"
    result = subprocess.run(
        [executable, "--no-cache"],
        cwd=ROOT,
        capture_output=True,
        text=True,
        timeout=120,
        env={**os.environ, "PYTHONPATH": str(ROOT)},
    )
    assert result.returncode == 0, result.stdout[-4000:] + result.stderr[-2000:]
    assert "2 kept, 0 broken" in result.stdout
