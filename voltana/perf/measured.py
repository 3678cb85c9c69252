"""Measured profiles: a ProfileTable plus what it was measured on, in one CSV file.

The file is the ProfileTable CSV (phase, sm_clock_mhz, batch_size, tokens, latency_ms, power_w)
with ``idle`` rows (batch 0, tokens 0, latency 0: the draw of the idle engine at that clock)
and two comment lines in front::

    # voltana-profile 1
    # metadata {"gpu": {...}, "model": {...}, "kv_capacity_tokens": ..., ...}

``MeasuredProfile.performance_model()`` turns it into the ``ProfiledPerformanceModel`` every
policy, the simulator and the simulated engines can use instead of the analytical model. Its GPU
is the catalog entry when the profiled GPU is catalogued, otherwise one built from the measured
clocks and power limit (so GPUs outside the catalog work through a profile).
"""

from __future__ import annotations

import itertools
import json
from collections import Counter
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path
from typing import Any

from voltana.errors import ConfigError
from voltana.hardware.gpus import GPU_CATALOG, GpuSpec
from voltana.hardware.models import ModelSpec
from voltana.perf.profile import ProfiledPerformanceModel, ProfileTable

FORMAT_LINE = "voltana-profile 1"
_METADATA_PREFIX = "metadata "
# Assumed for GPUs outside the catalog: only the offline simulator's KV transfer uses them.
_UNCATALOGUED_KV_TRANSFER_GB_S = 25.0
_UNCATALOGUED_CLOCK_CHANGE_DELAY_MS = 50.0


@dataclass(frozen=True)
class ProfiledGpu:
    """The GPU a profile was measured on, as its node agent reported it."""

    name: str
    # Catalog key ("" when the catalog has no such GPU).
    key: str
    supported_sm_clocks_mhz: tuple[int, ...]
    default_sm_clock_mhz: int
    power_limit_w: float = 0.0
    memory_gib: float = 0.0
    driver_version: str = ""
    energy_counter: bool = True


@dataclass(frozen=True)
class ProfileMetadata:
    gpu: ProfiledGpu
    model: ModelSpec
    # KV-cache capacity of the instance (SGLang's max_total_num_tokens) and its batch limit.
    kv_capacity_tokens: int
    max_running_requests: int = 0
    model_path: str = ""
    sglang_version: str = ""
    engine_url: str = ""
    created_at: str = ""
    # How power was measured: "energy counter" or "power samples".
    power_source: str = "energy counter"
    # Anything else worth keeping (e.g. the simulated engine's speedup).
    notes: dict[str, Any] = field(default_factory=dict)

    def to_json(self) -> dict[str, Any]:
        document = asdict(self)
        document["gpu"]["supported_sm_clocks_mhz"] = list(self.gpu.supported_sm_clocks_mhz)
        return document

    @classmethod
    def from_json(cls, document: Any, source: str) -> ProfileMetadata:
        if not isinstance(document, dict):
            raise ConfigError(f"{source}: the profile metadata is not a JSON object")
        try:
            gpu = dict(document["gpu"])
            gpu["supported_sm_clocks_mhz"] = tuple(int(c) for c in gpu["supported_sm_clocks_mhz"])
            model = ModelSpec(**_known(ModelSpec, document["model"]))
            rest = _known(cls, document)
            rest.update(gpu=ProfiledGpu(**_known(ProfiledGpu, gpu)), model=model)
            metadata = cls(**rest)
        except (KeyError, TypeError, ValueError) as exc:
            raise ConfigError(f"{source}: bad profile metadata ({exc!r})") from None
        if not metadata.gpu.supported_sm_clocks_mhz:
            raise ConfigError(f"{source}: the profile metadata lists no supported clocks")
        if metadata.kv_capacity_tokens <= 0:
            raise ConfigError(f"{source}: kv_capacity_tokens must be > 0")
        return metadata


def _known(kind: type, values: Any) -> dict[str, Any]:
    """The entries of ``values`` that are fields of ``kind`` (newer files may carry more)."""
    names = {f.name for f in fields(kind)}
    return {key: value for key, value in dict(values).items() if key in names}


@dataclass(frozen=True)
class MeasuredProfile:
    table: ProfileTable
    metadata: ProfileMetadata

    def write(self, path: Path) -> None:
        comment = _METADATA_PREFIX + json.dumps(self.metadata.to_json(), separators=(",", ":"))
        try:
            self.table.write_csv(path, comments=(FORMAT_LINE, comment))
        except OSError as exc:
            raise ConfigError(f"cannot write {path}: {exc.strerror}") from None

    @classmethod
    def read(cls, path: str | Path) -> MeasuredProfile:
        path = Path(path)
        try:
            with path.open() as handle:
                head = [handle.readline() for _ in range(2)]
        except OSError as exc:
            raise ConfigError(f"{path}: {exc.strerror}") from None
        if head[0].strip() != f"# {FORMAT_LINE}":
            raise ConfigError(
                f"{path}: not a measured profile (its first line must be '# {FORMAT_LINE}'; "
                "`voltana profile` writes them)"
            )
        meta_line = head[1].removeprefix("#").strip()
        if not meta_line.startswith(_METADATA_PREFIX):
            raise ConfigError(f"{path}: the second line must be '# {_METADATA_PREFIX}{{...}}'")
        try:
            document = json.loads(meta_line.removeprefix(_METADATA_PREFIX))
        except json.JSONDecodeError as exc:
            raise ConfigError(f"{path}: the profile metadata is not JSON ({exc})") from None
        profile = cls(ProfileTable.read_csv(path), ProfileMetadata.from_json(document, str(path)))
        profile.check(str(path))
        return profile

    def check(self, source: str) -> None:
        """ConfigError unless the table can back a performance model."""
        table = self.table
        for phase in ("prefill", "decode", "idle"):
            if not table.phase(phase):
                raise ConfigError(f"{source}: the profile has no {phase} rows")
        prefill, decode = table.clocks_mhz("prefill"), table.clocks_mhz("decode")
        if prefill != decode:
            raise ConfigError(
                f"{source}: prefill and decode were profiled at different clocks "
                f"({prefill} vs {decode})"
            )

    @property
    def idle_power_w_by_clock(self) -> dict[int, float]:
        return {p.sm_clock_mhz: p.power_w for p in self.table.phase("idle")}

    def gpu_spec(self) -> GpuSpec:
        """The catalog entry of the profiled GPU (or one built from what was measured), with
        its lowest clock raised to the lowest profiled one: below it the profile knows nothing,
        so no policy may go there."""
        gpu = self.metadata.gpu
        if gpu.key in GPU_CATALOG:
            spec = GPU_CATALOG[gpu.key]
        else:
            spec = uncatalogued_gpu_spec(gpu, min(self.idle_power_w_by_clock.values()))
        lowest_mhz = min(self.table.clocks_mhz("decode"))
        if lowest_mhz <= spec.min_sm_clock_mhz:
            return spec
        return replace(spec, min_sm_clock_mhz=spec.clamp_sm_clock_mhz(lowest_mhz))

    def model_spec(self) -> ModelSpec:
        return self.metadata.model

    def performance_model(self) -> ProfiledPerformanceModel:
        return ProfiledPerformanceModel(
            self.gpu_spec(),
            self.model_spec(),
            ProfileTable(tuple(p for p in self.table.points if p.phase != "idle")),
            kv_capacity_tokens=self.metadata.kv_capacity_tokens,
            idle_power_w_by_clock=self.idle_power_w_by_clock,
        )


def uncatalogued_gpu_spec(gpu: ProfiledGpu, idle_w: float) -> GpuSpec:
    """A GpuSpec for a GPU outside the catalog. Clocks and power come from the measurement;
    bandwidth and compute peak are unknown (0: only the analytical model would use them)."""
    clocks = sorted(gpu.supported_sm_clocks_mhz)
    steps = Counter(b - a for a, b in itertools.pairwise(clocks) if b > a)
    step = steps.most_common(1)[0][0] if steps else 1
    slug = "-".join(gpu.name.lower().replace("nvidia", "").split()) or "profiled-gpu"
    return GpuSpec(
        key=slug,
        display_name=gpu.name,
        min_sm_clock_mhz=clocks[0],
        max_sm_clock_mhz=clocks[-1],
        sm_clock_step_mhz=step,
        default_sm_clock_mhz=gpu.default_sm_clock_mhz or clocks[-1],
        memory_bandwidth_gb_s=0.0,
        peak_bf16_tflops=0.0,
        memory_gib=gpu.memory_gib,
        tdp_w=gpu.power_limit_w or float("inf"),
        idle_w=idle_w,
        context_w=0.0,
        nvlink_gb_s=0.0,
        kv_transfer_gb_s=_UNCATALOGUED_KV_TRANSFER_GB_S,
        clock_change_delay_ms=_UNCATALOGUED_CLOCK_CHANGE_DELAY_MS,
    )
