"""Which catalog GPU a device name (as NVML and nvidia-smi report it) stands for.

NVML names are not the catalog's display names: an H100 SXM5 reports "NVIDIA H100 80GB HBM3",
an H200 SXM "NVIDIA H200". Only variants with the catalog entry's clocks, memory and power
envelope are mapped; PCIe and NVL boards (lower TDP, other bandwidth) are left unknown so that
nobody steers them with the wrong physics (measure a profile instead; docs/gpu-host.md).
"""

from __future__ import annotations

import re

from voltana.hardware.gpus import GPU_CATALOG

# Normalised NVML name → catalog key (besides each entry's own display name).
_NVML_ALIASES: dict[str, str] = {
    "nvidia a100 sxm4 80gb": "a100-80g",
    "nvidia h100 80gb hbm3": "h100-80g",
    "nvidia h100 sxm5 80gb": "h100-80g",
    "nvidia h200": "h200",
    "nvidia h200 141gb hbm3e": "h200",
    "nvidia h200 sxm 141gb": "h200",
}


def _normalise(name: str) -> str:
    return re.sub(r"[\s_-]+", " ", name.strip().casefold())


def catalog_key_for_device_name(name: str) -> str:
    """The catalog key of a device called ``name``; "" when the catalog has no such GPU."""
    wanted = _normalise(name)
    for spec in GPU_CATALOG.values():
        if _normalise(spec.display_name) == wanted:
            return spec.key
    return _NVML_ALIASES.get(wanted, "")
