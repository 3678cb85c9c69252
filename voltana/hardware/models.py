"""LLM architecture catalog: enough numbers to count FLOPs, weight bytes and KV bytes."""

from __future__ import annotations

import json
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

from voltana.errors import ConfigError, UnknownNameError

_DTYPE_BYTES = {"bfloat16": 2, "float16": 2, "bf16": 2, "fp16": 2, "float32": 4, "fp8": 1}


@dataclass(frozen=True)
class ModelSpec:
    """A dense decoder-only transformer (Llama/Mistral/Qwen family)."""

    key: str
    num_layers: int
    hidden_size: int
    num_attention_heads: int
    num_kv_heads: int
    intermediate_size: int
    vocab_size: int
    dtype_bytes: int = 2
    tensor_parallel: int = 1
    head_dim: int | None = None
    max_context_tokens: int = 131072
    tie_word_embeddings: bool = False

    @property
    def head_dim_(self) -> int:
        return self.head_dim or self.hidden_size // self.num_attention_heads

    @property
    def param_count(self) -> int:
        h, d = self.hidden_size, self.head_dim_
        attention = h * d * (self.num_attention_heads * 2 + self.num_kv_heads * 2)
        mlp = 3 * h * self.intermediate_size
        embeddings = self.vocab_size * h * (1 if self.tie_word_embeddings else 2)
        return self.num_layers * (attention + mlp + 2 * h) + embeddings + h

    @property
    def weight_bytes_per_gpu(self) -> float:
        return self.param_count * self.dtype_bytes / self.tensor_parallel

    @property
    def kv_bytes_per_token_per_gpu(self) -> float:
        """K and V for every layer; KV heads are split across the TP group (at least one each)."""
        kv_heads = max(1, self.num_kv_heads // self.tensor_parallel)
        return 2 * self.num_layers * kv_heads * self.head_dim_ * self.dtype_bytes

    @property
    def linear_flops_per_token(self) -> float:
        """Matmul FLOPs per token through all weights (2 per MAC), whole model (all TP ranks)."""
        embeddings = self.vocab_size * self.hidden_size * (1 if self.tie_word_embeddings else 2)
        return 2.0 * (self.param_count - embeddings + self.vocab_size * self.hidden_size)

    def attention_flops(self, query_tokens: int, context_tokens: int) -> float:
        """QK^T and AV FLOPs for ``query_tokens`` attending to ``context_tokens`` each."""
        return (
            4.0
            * self.num_layers
            * self.num_attention_heads
            * self.head_dim_
            * (query_tokens * context_tokens)
        )

    def with_tensor_parallel(self, tp: int) -> ModelSpec:
        if tp < 1:
            raise ConfigError(f"tensor-parallel degree must be >= 1, got {tp}")
        if not self.splits_over(tp):
            valid = [n for n in range(1, self.num_attention_heads + 1) if self.splits_over(n)]
            raise ConfigError(
                f"{self.key} cannot run at TP {tp}: its {self.num_attention_heads} attention "
                f"heads and {self.num_kv_heads} KV heads must split evenly over the GPUs; "
                f"valid TP degrees: {', '.join(map(str, valid))}"
            )
        return replace(self, tensor_parallel=tp)

    def splits_over(self, tp: int) -> bool:
        """Whether tensor parallelism over ``tp`` GPUs divides the heads as SGLang requires:
        attention heads evenly, KV heads evenly (or replicated when there are fewer than GPUs)."""
        heads, kv_heads = self.num_attention_heads, self.num_kv_heads
        kv_ok = kv_heads % tp == 0 if kv_heads >= tp else tp % kv_heads == 0
        return tp >= 1 and heads % tp == 0 and kv_ok


MODEL_CATALOG: dict[str, ModelSpec] = {
    spec.key: spec
    for spec in (
        ModelSpec("llama-3.1-8b", 32, 4096, 32, 8, 14336, 128256),
        ModelSpec("ministral-3b", 26, 3072, 32, 8, 8192, 131072, head_dim=128),
        ModelSpec(
            "qwen3-32b", 64, 5120, 64, 8, 25600, 151936, head_dim=128, max_context_tokens=40960
        ),
        ModelSpec("llama-3.1-70b", 80, 8192, 64, 8, 28672, 128256),
    )
}


def get_model(key: str) -> ModelSpec:
    try:
        return MODEL_CATALOG[key.lower()]
    except KeyError:
        raise UnknownNameError("model", key, MODEL_CATALOG) from None


def load_hf_config(path: str | Path, key: str | None = None) -> ModelSpec:
    """Build a ModelSpec from a Hugging Face ``config.json``."""
    path = Path(path)
    try:
        raw: dict[str, Any] = json.loads(path.read_text())
    except FileNotFoundError:
        raise ConfigError(f"{path}: no such file") from None
    except IsADirectoryError:
        raise ConfigError(f"{path}: is a directory, not a config.json") from None
    except UnicodeDecodeError:
        raise ConfigError(f"{path}: not a text (JSON) file") from None
    except (OSError, json.JSONDecodeError) as exc:
        raise ConfigError(f"{path}: not a readable JSON config ({exc})") from None
    if not isinstance(raw, dict):
        raise ConfigError(f"{path}: expected a JSON object")
    config = raw.get("text_config", raw)  # multimodal configs nest the language model
    required = ("num_hidden_layers", "hidden_size", "num_attention_heads", "intermediate_size")
    missing = [name for name in required if name not in config]
    if missing:
        raise ConfigError(f"{path}: missing field(s) {', '.join(missing)}")
    try:
        heads = int(config["num_attention_heads"])
        dtype = str(config.get("torch_dtype") or config.get("dtype") or "bfloat16")
        return ModelSpec(
            key=key or str(config.get("_name_or_path") or path.parent.name or "custom"),
            num_layers=int(config["num_hidden_layers"]),
            hidden_size=int(config["hidden_size"]),
            num_attention_heads=heads,
            num_kv_heads=int(config.get("num_key_value_heads") or heads),
            intermediate_size=int(config["intermediate_size"]),
            vocab_size=int(config.get("vocab_size", 32000)),
            dtype_bytes=_DTYPE_BYTES.get(dtype, 2),
            head_dim=int(config["head_dim"]) if config.get("head_dim") else None,
            max_context_tokens=int(config.get("max_position_embeddings", 131072)),
            tie_word_embeddings=bool(config.get("tie_word_embeddings", False)),
        )
    except (TypeError, ValueError) as exc:
        raise ConfigError(f"{path}: invalid value ({exc})") from None
