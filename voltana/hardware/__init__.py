"""Catalogs of GPUs and LLM architectures: the numbers the performance model starts from."""

from voltana.hardware.gpus import GPU_CATALOG, GpuSpec, get_gpu
from voltana.hardware.models import MODEL_CATALOG, ModelSpec, get_model, load_hf_config

__all__ = [
    "GPU_CATALOG",
    "MODEL_CATALOG",
    "GpuSpec",
    "ModelSpec",
    "get_gpu",
    "get_model",
    "load_hf_config",
]
