"""Read-only facts about the GPUs of this host, for `voltana doctor` and scripts/device-check.

Nothing here changes a clock, a power limit or a mode.
"""

from __future__ import annotations

import os
from dataclasses import dataclass
from pathlib import Path

from voltana.gpu.errors import GpuError, GpuNotSupportedError
from voltana.gpu.nvml import NvmlGpu
from voltana.gpu.sample import GpuSample, read_gpu_sample
from voltana.hardware.gpu_names import catalog_key_for_device_name

# Bit of CAP_SYS_ADMIN in the capability masks of /proc/<pid>/status.
CAP_SYS_ADMIN_BIT = 21


@dataclass(frozen=True)
class GpuFacts:
    """One GPU as NVML reports it, read once."""

    index: int
    name: str
    uuid: str
    # Catalog key ("" when the catalog has no such GPU).
    catalog_key: str
    supported_sm_clocks_mhz: tuple[int, ...]
    default_sm_clock_mhz: int
    sample: GpuSample
    # None when the GPU has no energy counter; sample.energy_j is then meaningless.
    energy_j: float | None
    power_limit_w: float | None
    persistence_mode: bool | None


def read_gpu_facts(gpu: NvmlGpu, timestamp_s: float) -> GpuFacts:
    """The GPU's facts; readings a GPU does not support come back as None."""
    try:
        sample = read_gpu_sample(gpu, timestamp_s)
        energy_j: float | None = sample.energy_j
    except GpuNotSupportedError:
        # No energy counter (pre-Volta): read the rest on its own.
        sample = GpuSample(gpu.index, timestamp_s, gpu.sm_clock_mhz(), gpu.power_w(), 0.0)
        energy_j = None
    try:
        power_limit_w: float | None = gpu.power_limit_w()
    except GpuError:
        power_limit_w = None
    try:
        persistence: bool | None = gpu.persistence_mode_enabled()
    except GpuError:
        persistence = None
    return GpuFacts(
        index=gpu.index,
        name=gpu.name,
        uuid=gpu.uuid,
        catalog_key=catalog_key_for_device_name(gpu.name),
        supported_sm_clocks_mhz=gpu.supported_sm_clocks_mhz(),
        default_sm_clock_mhz=gpu.default_sm_clock_mhz,
        sample=sample,
        energy_j=energy_j,
        power_limit_w=power_limit_w,
        persistence_mode=persistence,
    )


@dataclass(frozen=True)
class ClockPrivilege:
    """Whether this process may lock clocks (NVML needs root or CAP_SYS_ADMIN)."""

    allowed: bool
    reason: str


def clock_lock_privilege(
    euid: int | None = None, status_path: Path = Path("/proc/self/status")
) -> ClockPrivilege:
    """Read-only: is CAP_SYS_ADMIN in this process's effective capabilities?

    The NVIDIA kernel driver checks the capability, not the user id: root outside a container
    has it, root in a container only with `cap_add: [SYS_ADMIN]` (or --privileged).
    """
    euid = os.geteuid() if euid is None else euid
    user = "root" if euid == 0 else f"uid {euid}"
    try:
        status = status_path.read_text()
    except OSError as error:
        # No procfs: only the user id is left to go by.
        return ClockPrivilege(euid == 0, f"{user}; cannot read {status_path}: {error.strerror}")
    for line in status.splitlines():
        if line.startswith("CapEff:"):
            mask = int(line.split(":", 1)[1].strip(), 16)
            if mask >> CAP_SYS_ADMIN_BIT & 1:
                return ClockPrivilege(True, f"{user} with CAP_SYS_ADMIN")
            return ClockPrivilege(False, f"{user} without CAP_SYS_ADMIN")
    return ClockPrivilege(euid == 0, f"{user}; no CapEff line in {status_path}")
