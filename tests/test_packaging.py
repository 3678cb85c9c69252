"""The package as it ships: the wheel built the way docker/Dockerfile builds it, from exactly the
files the Dockerfile copies. The services install from their real folders under
voltana/services (no package mapping, no symlink), with the typed-package markers and data, and
matplotlib only as the optional ``plot`` extra."""

from __future__ import annotations

import email.parser
import re
import shutil
import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

pytestmark = pytest.mark.integration

ROOT = Path(__file__).resolve().parent.parent
DOCKERFILE = ROOT / "docker" / "Dockerfile"
SERVICES = ("telemetry", "controller", "router", "agent")
IGNORED = shutil.ignore_patterns("__pycache__", "*.pyc", "*.egg-info")


def builder_stage_sources() -> list[str]:
    """Paths the Dockerfile's wheel stage copies into its build context."""
    stages = re.split(r"^FROM ", DOCKERFILE.read_text(), flags=re.MULTILINE)
    builder = stages[1]
    assert builder.startswith("python:3.11-slim AS wheel"), builder.splitlines()[0]
    sources: list[str] = []
    for line in builder.splitlines():
        if line.startswith("COPY "):
            *copied, _destination = line.split()[1:]
            sources.extend(copied)
    return sources


@pytest.fixture(scope="module")
def wheel(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("packaging")
    context = work / "context"
    context.mkdir()
    for source in builder_stage_sources():
        origin = ROOT / source
        if origin.is_dir():
            shutil.copytree(origin, context / source, ignore=IGNORED)
        else:
            shutil.copy2(origin, context / source)
    dist = work / "dist"
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q"),
            *("--wheel-dir", str(dist), str(context)),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    (built,) = dist.glob("voltana-*.whl")
    return built


def source_modules(folder: Path, installed_as: str) -> set[str]:
    return {
        f"{installed_as}/{path.relative_to(folder).as_posix()}"
        for path in folder.rglob("*.py")
        if "__pycache__" not in path.parts
    }


def test_services_install_as_voltana_services(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    modules = {name for name in names if name.endswith(".py")}
    assert modules == source_modules(ROOT / "voltana", "voltana")
    for service in SERVICES:
        assert f"voltana/services/{service}/__init__.py" in names
    assert not any(name.startswith("services/") for name in names)
    assert not (ROOT / "setup.py").exists() and not (ROOT / "services").exists()


def test_wheel_carries_type_information_and_data(wheel: Path) -> None:
    names = set(zipfile.ZipFile(wheel).namelist())
    assert "voltana/py.typed" in names
    stubs = {path.name for path in (ROOT / "voltana" / "v1").glob("*.pyi")}
    assert stubs and {f"voltana/v1/{name}" for name in stubs} <= names
    data = {path.name for path in (ROOT / "voltana" / "data").iterdir() if path.is_file()}
    assert data and {f"voltana/data/{name}" for name in data} <= names


def test_matplotlib_is_only_the_plot_extra(wheel: Path) -> None:
    archive = zipfile.ZipFile(wheel)
    (metadata_name,) = [n for n in archive.namelist() if n.endswith(".dist-info/METADATA")]
    metadata = email.parser.Parser().parsestr(archive.read(metadata_name).decode())
    assert "plot" in metadata.get_all("Provides-Extra", [])
    for requirement in metadata.get_all("Requires-Dist", []):
        if requirement.lower().startswith("matplotlib"):
            assert 'extra == "plot"' in requirement, requirement


def test_installed_wheel_runs_its_services_and_cli(wheel: Path, tmp_path: Path) -> None:
    target = tmp_path / "site"
    subprocess.run(
        [
            *(sys.executable, "-m", "pip", "install", "--no-deps", "-q"),
            *("--target", str(target), str(wheel)),
        ],
        check=True,
        capture_output=True,
        timeout=300,
    )
    # The installed copy comes first on the path; the checkout is not on it (cwd elsewhere).
    probe = (
        "import sys; sys.path.insert(0, sys.argv[1]); import importlib\n"
        f"for name in {[f'voltana.services.{s}' for s in SERVICES]!r} + ['voltana.cli.main']:\n"
        "    print(importlib.import_module(name).__file__)\n"
        "from voltana.cli.main import main\n"
        "sys.exit(main(['serve', 'router', '--help']))\n"
    )
    result = subprocess.run(
        [sys.executable, "-c", probe, str(target)],
        cwd=tmp_path,
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 0, result.stderr
    files = result.stdout.splitlines()[: len(SERVICES) + 1]
    assert all(Path(file).is_relative_to(target) for file in files), files
    assert "usage: voltana serve router" in result.stdout
