"""GPU-host tooling over an autospec'd pynvml: NVML name variants, `voltana doctor`, the device
check (scripts/device-check) and what the node agent reports about its GPUs."""

from __future__ import annotations

import io
import itertools
import re
import shlex
from collections.abc import Sequence
from pathlib import Path
from typing import Any
from unittest import mock

import pynvml
import pytest

from voltana.cli.doctor_cmd import diagnose
from voltana.cli.main import build_parser, main
from voltana.gpu.device_check import (
    Comparison,
    parse_smi_gpus,
    parse_supported_sm_clocks,
    run_device_check,
)
from voltana.gpu.host import ClockPrivilege, clock_lock_privilege
from voltana.hardware.gpu_names import catalog_key_for_device_name
from voltana.rpc import create_channel
from voltana.rpc.security import RpcSecurity
from voltana.services.agent import AgentService, AgentSettings
from voltana.v1 import agent_pb2, agent_pb2_grpc

H100_CLOCKS_DESCENDING_MHZ = list(range(1980, 344, -15))
READ_ONLY_PREFIXES = ("nvmlInit", "nvmlShutdown", "nvmlDeviceGet", "nvmlSystemGet")


def h100_nvml(**overrides: Any) -> Any:
    """pynvml as on a host with two H100 SXM5 GPUs (as NVML names them)."""
    nvml = mock.create_autospec(pynvml)
    nvml.nvmlSystemGetDriverVersion.return_value = "550.54.15"
    nvml.nvmlDeviceGetCount.return_value = 2
    nvml.nvmlDeviceGetHandleByIndex.side_effect = lambda index: f"handle-{index}"
    nvml.nvmlDeviceGetName.return_value = "NVIDIA H100 80GB HBM3"
    nvml.nvmlDeviceGetUUID.side_effect = lambda handle: f"GPU-{handle}"
    nvml.nvmlDeviceGetSupportedMemoryClocks.return_value = [2619]
    nvml.nvmlDeviceGetSupportedGraphicsClocks.return_value = H100_CLOCKS_DESCENDING_MHZ
    nvml.nvmlDeviceGetDefaultApplicationsClock.return_value = 1980
    nvml.nvmlDeviceGetClockInfo.return_value = 1980
    nvml.nvmlDeviceGetPowerUsage.return_value = 112_500
    nvml.nvmlDeviceGetEnforcedPowerLimit.return_value = 700_000
    nvml.nvmlDeviceGetTotalEnergyConsumption.return_value = 9_000_000
    nvml.nvmlDeviceGetPersistenceMode.return_value = pynvml.NVML_FEATURE_ENABLED
    for name, value in overrides.items():
        as_effect = callable(value) or isinstance(value, BaseException)
        setattr(getattr(nvml, name), "side_effect" if as_effect else "return_value", value)
    return nvml


def only_queries(nvml: Any) -> list[str]:
    """NVML functions called that are not queries (must stay empty for read-only tools)."""
    called = {call[0].split(".")[0] for call in nvml.method_calls}
    return sorted(name for name in called if not name.startswith(READ_ONLY_PREFIXES))


def nvml_error(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


ROOT = ClockPrivilege(True, "root with CAP_SYS_ADMIN")


# ---- NVML names ----------------------------------------------------------------------------


@pytest.mark.unit
@pytest.mark.parametrize(
    ("name", "key"),
    [
        ("NVIDIA A100-SXM4-80GB", "a100-80g"),
        ("NVIDIA H100 80GB HBM3", "h100-80g"),
        ("NVIDIA H100-SXM5-80GB", "h100-80g"),
        ("nvidia h100 80gb hbm3 ", "h100-80g"),
        ("NVIDIA H200", "h200"),
        ("NVIDIA H200-SXM-141GB", "h200"),
        ("NVIDIA H100 PCIe", ""),  # other TDP and bandwidth: not the SXM entry
        ("NVIDIA H200 NVL", ""),
        ("NVIDIA GeForce RTX 4090", ""),
    ],
)
def test_nvml_name_variants_map_to_the_catalog(name: str, key: str) -> None:
    assert catalog_key_for_device_name(name) == key


# ---- privileges ----------------------------------------------------------------------------


@pytest.mark.unit
def test_clock_lock_privilege_reads_cap_sys_admin(tmp_path: Path) -> None:
    status = tmp_path / "status"
    status.write_text("Name:\tpython\nCapEff:\t000001ffffffffff\n")
    assert clock_lock_privilege(euid=0, status_path=status) == ClockPrivilege(
        True, "root with CAP_SYS_ADMIN"
    )
    # Docker's default set for root: no CAP_SYS_ADMIN (bit 21).
    status.write_text("CapEff:\t00000000a80425fb\n")
    privilege = clock_lock_privilege(euid=0, status_path=status)
    assert not privilege.allowed and privilege.reason == "root without CAP_SYS_ADMIN"
    status.write_text("CapEff:\t0000000000200000\n")  # cap_add: [SYS_ADMIN], not root
    assert clock_lock_privilege(euid=1000, status_path=status).allowed
    assert not clock_lock_privilege(euid=1000, status_path=tmp_path / "missing").allowed


# ---- voltana doctor ------------------------------------------------------------------------


@pytest.mark.unit
def test_doctor_reports_a_healthy_host_without_changing_anything() -> None:
    nvml = h100_nvml()
    out = io.StringIO()
    assert diagnose(nvml=nvml, privilege=ROOT, out=out) == 0
    text = out.getvalue()
    assert "read-only" in text.splitlines()[0]
    assert "ok    NVML: driver 550.54.15, 2 GPU(s) visible" in text
    assert "GPU 0 NVIDIA H100 80GB HBM3: catalog GPU h100-80g" in text
    assert "110 supported SM clocks, 345-1980 MHz; default 1980 MHz, now 1980 MHz" in text
    assert "drawing 112.5 W of a 700 W limit" in text
    assert "energy counter at 9000.0 J" in text
    assert "clock locking allowed: root with CAP_SYS_ADMIN" in text
    assert only_queries(nvml) == []


@pytest.mark.unit
def test_doctor_warns_and_fails_where_the_host_falls_short() -> None:
    nvml = h100_nvml(
        nvmlDeviceGetName="NVIDIA H100 PCIe",
        nvmlDeviceGetTotalEnergyConsumption=nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED),
        nvmlDeviceGetPersistenceMode=pynvml.NVML_FEATURE_DISABLED,
    )
    out = io.StringIO()
    code = diagnose(nvml=nvml, privilege=ClockPrivilege(False, "uid 1000"), out=out)
    text = out.getvalue()
    assert code == 1
    assert "warn  GPU 0 NVIDIA H100 PCIe: not in the GPU catalog" in text
    assert "no energy counter" in text
    assert "persistence mode is off" in text
    assert "fail  clock locking not allowed: uid 1000" in text
    assert only_queries(nvml) == []


@pytest.mark.unit
def test_doctor_without_a_driver_fails_with_the_reason() -> None:
    nvml = h100_nvml(nvmlInit=nvml_error(pynvml.NVML_ERROR_LIBRARY_NOT_FOUND))
    out = io.StringIO()
    assert diagnose(nvml=nvml, privilege=ROOT, out=out) == 1
    assert "fail  NVML: initialising NVML failed" in out.getvalue()
    assert "libnvidia-ml.so.1" in out.getvalue()


@pytest.mark.unit
def test_doctor_try_lock_locks_the_default_clock_and_resets() -> None:
    nvml = h100_nvml()
    out = io.StringIO()
    assert diagnose(try_lock=True, nvml=nvml, privilege=ROOT, out=out) == 0
    assert nvml.nvmlDeviceSetGpuLockedClocks.call_args_list == [
        mock.call("handle-0", 1980, 1980),
        mock.call("handle-1", 1980, 1980),
    ]
    assert nvml.nvmlDeviceResetGpuLockedClocks.call_count == 2
    assert "ok    GPU 1: locked 1980 MHz and reset" in out.getvalue()
    nvml.nvmlDeviceSetGpuLockedClocks.side_effect = nvml_error(pynvml.NVML_ERROR_NO_PERMISSION)
    out = io.StringIO()
    assert diagnose(try_lock=True, nvml=nvml, privilege=ROOT, out=out) == 1
    assert "fail  GPU 0: locking 1980 MHz failed" in out.getvalue()


@pytest.mark.e2e
def test_doctor_command_without_nvml_exits_1(capsys: pytest.CaptureFixture[str]) -> None:
    # No GPU and no driver on this machine: the real pynvml fails to load the library.
    assert main(["doctor"]) == 1
    assert "fail  NVML:" in capsys.readouterr().out


# ---- the device check ----------------------------------------------------------------------

SMI_GPUS = (
    "0, NVIDIA H100 80GB HBM3, GPU-handle-0, 550.54.15, 1980, 110.20, 700.00\n"
    "1, NVIDIA H100 80GB HBM3, GPU-handle-1, 550.54.15, 1965, [N/A], 700.00\n"
)


def smi_clocks(clocks: Sequence[int]) -> str:
    rows = [f"2619, {clock}" for clock in clocks] + ["1593, 1200", "1593, 300"]
    return "\n".join(rows) + "\n"


def fake_smi(gpus: str = SMI_GPUS, clocks: Sequence[int] = H100_CLOCKS_DESCENDING_MHZ) -> Any:
    def run(command: Sequence[str]) -> str:
        assert command[0] == "nvidia-smi"
        assert not any(flag in command for flag in ("-lgc", "-rgc", "-pl", "-pm", "-ac"))
        if any(part.startswith("--query-gpu=") for part in command):
            return gpus
        assert "--query-supported-clocks=mem,gr" in command
        return smi_clocks(clocks)

    return run


@pytest.mark.unit
def test_nvidia_smi_output_parses() -> None:
    gpus = parse_smi_gpus(SMI_GPUS)
    assert [(g.index, g.sm_clock_mhz, g.power_w) for g in gpus] == [
        (0, 1980, 110.2),
        (1, 1965, None),
    ]
    assert parse_supported_sm_clocks(smi_clocks([1980, 1965])) == (1965, 1980)
    with pytest.raises(ValueError, match="unexpected nvidia-smi row"):
        parse_smi_gpus("0, name\n")


def _device_check(nvml: Any, runner: Any) -> list[Comparison]:
    ticks = itertools.count()
    items = run_device_check(
        nvml=nvml,
        runner=runner,
        interval_s=2.0,
        sleep=lambda _s: None,
        clock=lambda: 1000.0 + 2.0 * (next(ticks) >= 2),  # two GPUs read before, then after
    )
    return [item for item in items if isinstance(item, Comparison)]


@pytest.mark.unit
def test_device_check_matches_a_consistent_host_read_only() -> None:
    energy_mj = iter([9_000_000, 9_000_000, 9_225_000, 9_225_000])  # +225 J over 2 s = 112.5 W
    nvml = h100_nvml(nvmlDeviceGetTotalEnergyConsumption=lambda handle: next(energy_mj))
    comparisons = _device_check(nvml, fake_smi())
    verdicts = {(c.gpu_index, c.what.split(" (")[0]): c.matches for c in comparisons}
    assert verdicts[(0, "name")] and verdicts[(0, "supported SM clocks")]
    assert verdicts[(0, "SM clock")] and verdicts[(1, "SM clock")]  # 1980 vs 1965: one step
    assert verdicts[(0, "power")] and verdicts[(1, "power")] is None  # [N/A] is skipped
    energy = [c for c in comparisons if c.what.startswith("energy counter")]
    assert [c.matches for c in energy] == [True, True]
    assert energy[0].agent == "112.5"
    assert only_queries(nvml) == []


@pytest.mark.unit
def test_device_check_flags_disagreements() -> None:
    energy_mj = iter([9_000_000, 9_000_000, 9_001_000, 9_001_000])  # counter barely moves
    nvml = h100_nvml(nvmlDeviceGetTotalEnergyConsumption=lambda handle: next(energy_mj))
    wrong = SMI_GPUS.replace("110.20", "300.00")
    comparisons = _device_check(nvml, fake_smi(wrong, clocks=[1980, 1500]))
    mismatched = {(c.gpu_index, c.what) for c in comparisons if c.matches is False}
    assert (0, "power (W)") in mismatched
    assert (0, "supported SM clocks") in mismatched
    assert any(what.startswith("energy counter") for _, what in mismatched)


# ---- what the agent reports ----------------------------------------------------------------


@pytest.mark.integration
async def test_agent_reports_clocks_energy_counter_driver_and_the_h100_key() -> None:
    nvml = h100_nvml(
        nvmlDeviceGetTotalEnergyConsumption=lambda handle: (
            5_000
            if handle == "handle-0"
            else (_ for _ in ()).throw(nvml_error(pynvml.NVML_ERROR_NOT_SUPPORTED))
        )
    )
    security = RpcSecurity.generated()
    # The autospec'd pynvml lives in this process: no fail-safe watchdog process can use it.
    settings = AgentSettings(
        backend="nvml", reset_on_start=False, failsafe_watchdog=False, security=security
    )
    async with (
        AgentService(settings, nvml=nvml) as agent,
        create_channel(agent.address, security=security) as channel,
    ):
        stub = agent_pb2_grpc.NodeAgentServiceStub(channel)
        listing = await stub.ListGpus(agent_pb2.ListGpusRequest())
    assert listing.driver_version == "550.54.15"
    first, second = listing.gpus
    assert first.gpu_key == "h100-80g" and first.name == "NVIDIA H100 80GB HBM3"
    assert list(first.supported_sm_clocks_mhz) == sorted(H100_CLOCKS_DESCENDING_MHZ)
    assert first.default_sm_clock_mhz == 1980
    assert first.energy_counter_supported and not second.energy_counter_supported


def test_every_voltana_command_in_the_gpu_host_guide_parses() -> None:
    """docs/gpu-host.md's commands are real: each `voltana ...` line of its code blocks (with
    its continuation lines) parses with the CLI's own parser."""
    text = (Path(__file__).resolve().parent.parent / "docs" / "gpu-host.md").read_text()
    blocks = re.findall(r"```bash\n(.*?)```", text, flags=re.DOTALL)
    commands = []
    for block in blocks:
        joined = block.replace("\\\n", " ")
        for line in joined.splitlines():
            for part in re.split(r"&&|\|\||[|;&]", line):
                words = shlex.split(part, comments=True)
                # What runs before voltana (sudo, env settings, docker run IMAGE) is not voltana's.
                while words and (words[0] != "voltana" or words[1:2] == ["voltana"]):
                    words.pop(0)
                if words and "..." not in words:
                    commands.append(words[1:])
    assert len(commands) >= 12
    for words in commands:
        try:
            build_parser().parse_args(words)
        except SystemExit as error:
            raise AssertionError(f"voltana {shlex.join(words)} does not parse") from error
