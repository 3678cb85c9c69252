"""Which performance model a command or service runs with, from its settings.

Three sources, most specific first: a measured profile (``voltana profile``: its GPU, model and
TP come with it), a Hugging Face ``config.json`` (a model outside the catalog) on a catalog GPU,
or a catalog GPU and model. Services call this at start, so bad files fail fast with a
ConfigError naming the file.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

from voltana.errors import ConfigError
from voltana.hardware import GpuSpec, ModelSpec, get_gpu, get_model, load_hf_config
from voltana.perf.analytical import AnalyticalPerformanceModel
from voltana.perf.measured import MeasuredProfile
from voltana.perf.model import PerformanceModel


@dataclass(frozen=True)
class Physics:
    gpu: GpuSpec
    model: ModelSpec
    perf: PerformanceModel
    # The measured profile the model comes from (None: analytical).
    profile: MeasuredProfile | None = None


def resolve_model(
    model_key: str, tensor_parallel: int, model_config_path: str | Path | None = None
) -> ModelSpec:
    model = load_hf_config(model_config_path) if model_config_path else get_model(model_key)
    return model.with_tensor_parallel(tensor_parallel)


def resolve_physics(
    *,
    gpu_key: str,
    model_key: str,
    tensor_parallel: int = 1,
    model_config_path: str | Path | None = None,
    profile_path: str | Path | None = None,
) -> Physics:
    """The GPU, model and performance model a service uses (see the module docstring)."""
    if profile_path:
        profile = MeasuredProfile.read(profile_path)
        return Physics(
            profile.gpu_spec(), profile.model_spec(), profile.performance_model(), profile
        )
    gpu = get_gpu(gpu_key)
    model = resolve_model(model_key, tensor_parallel, model_config_path)
    perf = AnalyticalPerformanceModel.for_hardware(gpu, model)
    if perf.kv_capacity_tokens() <= 0:
        raise ConfigError(
            f"{model.key} at TP {tensor_parallel} does not fit in one {gpu.key} "
            f"({gpu.memory_gib:.0f} GiB); raise the tensor-parallel degree"
        )
    return Physics(gpu, model, perf)
