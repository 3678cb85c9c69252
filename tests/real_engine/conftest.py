"""Fixtures of the real-engine tier: one real SGLang server (unified mode, on CPU) per session.

Nothing here runs unless ``VOLTANA_REAL_SGLANG_PYTHON`` names the Python of an environment
with SGLang installed (``scripts/test-real-engines`` makes one); without it every test of the
tier is skipped. The CUDA driver stub and the tiny model are built here when the script has
not built them already (``VOLTANA_REAL_SGLANG_CUDA_STUB``, ``VOLTANA_REAL_SGLANG_MODEL``).
"""

from __future__ import annotations

import contextlib
import os
import shutil
import subprocess
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest
from conftest import free_port

HERE = Path(__file__).resolve().parent
PYTHON_ENV = "VOLTANA_REAL_SGLANG_PYTHON"
STUB_ENV = "VOLTANA_REAL_SGLANG_CUDA_STUB"  # a folder holding libcuda.so.1
MODEL_ENV = "VOLTANA_REAL_SGLANG_MODEL"  # a folder holding the tiny model
# Loading the model and warming up take minutes on a busy 2-core host.
READY_TIMEOUT_S = float(os.environ.get("VOLTANA_REAL_SGLANG_READY_TIMEOUT_S", "900"))
# The KV pool of the tiny model: small, so the CPU allocation is quick.
MAX_TOTAL_TOKENS = 4096
# SGLang's /health runs a one-token generation (never under 1 s, several on a busy host).
HEALTH_TIMEOUT_S = 10.0
MAX_RUNNING_REQUESTS = 8
SERVED_MODEL_NAME = "tiny-llama"


def real_python() -> str:
    python = os.environ.get(PYTHON_ENV, "")
    if not python:
        pytest.skip(f"the real-engine tier needs {PYTHON_ENV} (run scripts/test-real-engines)")
    if not Path(python).is_file():
        pytest.fail(f"{PYTHON_ENV}={python!r} is not a file", pytrace=False)
    return python


def build_cuda_stub(out_dir: Path) -> Path:
    """``out_dir/libcuda.so.1`` from cuda_stub.c (gcc)."""
    compiler = shutil.which("gcc") or shutil.which("cc")
    if compiler is None:
        pytest.fail("the CUDA driver stub needs gcc (apt-get install gcc)", pytrace=False)
    out_dir.mkdir(parents=True, exist_ok=True)
    library = out_dir / "libcuda.so.1"
    subprocess.run(
        [compiler, "-shared", "-fPIC", "-O1", "-o", str(library), str(HERE / "cuda_stub.c")],
        check=True,
    )
    (out_dir / "libcuda.so").unlink(missing_ok=True)
    (out_dir / "libcuda.so").symlink_to("libcuda.so.1")
    return out_dir


def make_model(python: str, out_dir: Path) -> Path:
    subprocess.run([python, str(HERE / "make_tiny_model.py"), str(out_dir)], check=True)
    return out_dir


@dataclass
class RealSglang:
    """One running SGLang server."""

    url: str
    model_path: Path
    process: subprocess.Popen[bytes]
    log_path: Path

    def log_tail(self, chars: int = 4000) -> str:
        return self.log_path.read_text(errors="replace")[-chars:]

    def kill(self) -> None:
        """``kill -9`` the server and its scheduler and detokenizer processes."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.process.pid, 9)
        self.process.wait()

    def stop(self) -> None:
        if self.process.poll() is None:
            self.process.terminate()
            try:
                self.process.wait(timeout=30)
            except subprocess.TimeoutExpired:
                # The scheduler and detokenizer are children of the server: end the group.
                os.killpg(self.process.pid, 9)
                self.process.wait()
        else:
            # Children left behind by a server that died.
            with contextlib.suppress(ProcessLookupError):
                os.killpg(self.process.pid, 9)


def _answers(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=5) as response:
            return bool(response.status == 200)
    except (urllib.error.URLError, OSError):
        return False


def start_sglang(
    python: str, model: Path, stub_dir: Path, workdir: Path, *extra_args: str
) -> RealSglang:
    """``python -m sglang.launch_server`` in unified mode on CPU; returns once /health answers."""
    return start_sglang_servers(1, python, model, stub_dir, workdir, *extra_args)[0]


def start_sglang_servers(
    count: int, python: str, model: Path, stub_dir: Path, workdir: Path, *extra_args: str
) -> list[RealSglang]:
    """``count`` servers started side by side (loading overlaps); returns once all answer."""
    servers = [launch_sglang(python, model, stub_dir, workdir, *extra_args) for _ in range(count)]
    deadline = time.monotonic() + READY_TIMEOUT_S
    for server in servers:
        while not _answers(f"{server.url}/health"):
            if server.process.poll() is not None or time.monotonic() > deadline:
                for other in servers:
                    other.stop()
                what = "exited" if server.process.poll() is not None else "is not healthy in time"
                pytest.fail(f"SGLang {what}; its log:\n{server.log_tail()}", pytrace=False)
            time.sleep(1.0)
    return servers


def launch_sglang(
    python: str, model: Path, stub_dir: Path, workdir: Path, *extra_args: str
) -> RealSglang:
    """One server started (not waited for)."""
    port = free_port()
    env = dict(os.environ)
    env["LD_LIBRARY_PATH"] = os.pathsep.join(
        [str(stub_dir), *filter(None, [env.get("LD_LIBRARY_PATH")])]
    )
    env["CUDA_VISIBLE_DEVICES"] = ""
    # SGLang's CPU paths (without it, its rotary embedding reaches for vLLM's CUDA kernels).
    env["SGLANG_USE_CPU_ENGINE"] = "1"
    env["HF_HUB_OFFLINE"] = "1"
    env["TRANSFORMERS_OFFLINE"] = "1"
    env.setdefault("OMP_NUM_THREADS", "1")
    env.pop("PYTHONPATH", None)  # SGLang's environment, not Voltana's
    command = [
        python, "-m", "sglang.launch_server",
        "--model-path", str(model),
        "--served-model-name", SERVED_MODEL_NAME,
        "--host", "127.0.0.1",
        "--port", str(port),
        "--device", "cpu",
        "--attention-backend", "torch_native",
        "--sampling-backend", "pytorch",
        "--dtype", "float32",
        "--max-total-tokens", str(MAX_TOTAL_TOKENS),
        "--max-running-requests", str(MAX_RUNNING_REQUESTS),
        "--enable-metrics",
        "--skip-server-warmup",
        "--log-level", "info",
        *extra_args,
    ]  # fmt: skip
    log_path = workdir / f"sglang-{port}.log"
    with log_path.open("wb") as log:
        process = subprocess.Popen(
            command, stdout=log, stderr=subprocess.STDOUT, env=env, start_new_session=True
        )
    return RealSglang(f"http://127.0.0.1:{port}", model, process, log_path)


@pytest.fixture(scope="session")
def sglang_python() -> str:
    return real_python()


@pytest.fixture(scope="session")
def cuda_stub_dir(sglang_python: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    prepared = os.environ.get(STUB_ENV)
    if prepared and (Path(prepared) / "libcuda.so.1").is_file():
        return Path(prepared)
    return build_cuda_stub(tmp_path_factory.mktemp("cuda-stub"))


@pytest.fixture(scope="session")
def tiny_model(sglang_python: str, tmp_path_factory: pytest.TempPathFactory) -> Path:
    prepared = os.environ.get(MODEL_ENV)
    if prepared and (Path(prepared) / "config.json").is_file():
        return Path(prepared)
    return make_model(sglang_python, tmp_path_factory.mktemp("tiny-llama"))


@pytest.fixture(scope="session")
def real_sglang(
    sglang_python: str,
    cuda_stub_dir: Path,
    tiny_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RealSglang]:
    """A real SGLang server (unified mode, --enable-metrics) for the whole session."""
    server = start_sglang(
        sglang_python, tiny_model, cuda_stub_dir, tmp_path_factory.mktemp("sglang")
    )
    try:
        yield server
    finally:
        server.stop()


@pytest.fixture(scope="session")
def real_sglang_incremental(
    sglang_python: str,
    cuda_stub_dir: Path,
    tiny_model: Path,
    tmp_path_factory: pytest.TempPathFactory,
) -> Iterator[RealSglang]:
    """A second server with --incremental-streaming-output, as Voltana's deployments run it."""
    server = start_sglang(
        sglang_python,
        tiny_model,
        cuda_stub_dir,
        tmp_path_factory.mktemp("sglang-incremental"),
        "--incremental-streaming-output",
    )
    try:
        yield server
    finally:
        server.stop()
