"""Checks every report passes before a store accepts it (so bad data never reaches policies).

Strings are bounded too (voltana.rpc.limits), so no record, snapshot or message grows without
limit and no error message echoes more than a short prefix of what was sent.
"""

from __future__ import annotations

import dataclasses
import math
from typing import Any

from voltana.contract.instances import MAX_INSTANCE_GPUS, InstanceInfo
from voltana.contract.state import InstanceState, SloTarget, optional_state_fields
from voltana.rpc.limits import check_address, check_id, check_name, check_text, slo_target_problem
from voltana.services.telemetry.errors import InvalidTelemetryError
from voltana.services.telemetry.records import Completion, GpuReading

# Every number a state carries is a count, a size, a rate, a time or a reading: none is negative.
_NUMERIC_STATE_FIELDS: tuple[str, ...] = tuple(
    f.name
    for f in dataclasses.fields(InstanceState)
    if str(f.type).replace(" | None", "") in ("int", "float")
)
_OPTIONAL_STATE_FIELDS = tuple(sorted(optional_state_fields() & set(_NUMERIC_STATE_FIELDS)))


def _check_id(kind: str, value: str, *, required: bool = True) -> None:
    check_id(value, kind, error=InvalidTelemetryError, required=required)


def _non_negative_problem(owner: str, name: str, value: float | None) -> str | None:
    if value is None or (math.isfinite(value) and value >= 0):
        return None
    return f"{owner}: {name} must be a finite number >= 0, got {value}"


def _check_non_negative(owner: str, name: str, value: float | None) -> None:
    problem = _non_negative_problem(owner, name, value)
    if problem is not None:
        raise InvalidTelemetryError(problem)


def drop_impossible_measurements(state: InstanceState) -> tuple[InstanceState, tuple[str, ...]]:
    """``state`` with each measured value that may be unknown (recent TTFT/ITL) but cannot be
    true made unknown, and why each was dropped: one bad latency must not cost the load
    report it came with."""
    owner = f"instance {state.instance_id!r}"
    problems = {
        name: problem
        for name in _OPTIONAL_STATE_FIELDS
        if (problem := _non_negative_problem(owner, name, getattr(state, name))) is not None
    }
    if not problems:
        return state, ()
    unknown: dict[str, Any] = dict.fromkeys(problems)
    return dataclasses.replace(state, **unknown), tuple(problems.values())


def validate_instance_state(state: InstanceState) -> None:
    _check_id("instance_id", state.instance_id)
    owner = f"instance {state.instance_id!r}"
    for name in _NUMERIC_STATE_FIELDS:
        _check_non_negative(owner, name, getattr(state, name))


def validate_instance_info(info: InstanceInfo) -> None:
    _check_id("instance_id", info.instance_id)
    owner = f"instance {info.instance_id!r}"
    check_name(info.gpu_key, f"{owner}: gpu_key", error=InvalidTelemetryError)
    for name in ("engine_url", "bootstrap_host", "agent_address"):
        check_address(getattr(info, name), f"{owner}: {name}", error=InvalidTelemetryError)
    if not 0 <= info.bootstrap_port <= 65535:
        raise InvalidTelemetryError(f"{owner}: bootstrap_port {info.bootstrap_port} out of range")
    for name in ("gpu_index", "kv_tokens_capacity", "max_running_requests"):
        _check_non_negative(owner, name, getattr(info, name))
    if len(info.gpus) > MAX_INSTANCE_GPUS:
        raise InvalidTelemetryError(f"{owner}: more than {MAX_INSTANCE_GPUS} GPUs")
    for ref in info.gpus:
        check_address(ref.agent_address, f"{owner}: gpus", error=InvalidTelemetryError)
        if not ref.agent_address or ref.gpu_index < 0:
            raise InvalidTelemetryError(f"{owner}: every GPU needs an agent and an index >= 0")
    if len(set(info.gpus)) != len(info.gpus):
        raise InvalidTelemetryError(f"{owner}: a GPU is named twice")
    if info.gpus and info.gpus[0] != (info.agent_address, info.gpu_index):
        raise InvalidTelemetryError(
            f"{owner}: the first of its GPUs must be agent_address/gpu_index "
            f"({info.agent_address}, {info.gpu_index})"
        )


def validate_gpu_sample(sample: GpuReading) -> None:
    _check_id("instance_id", sample.instance_id)
    owner = f"GPU sample of {sample.instance_id!r}"
    for name in ("ts_s", "sm_clock_mhz", "power_w", "energy_j"):
        _check_non_negative(owner, name, getattr(sample, name))


def validate_completion(completion: Completion) -> None:
    _check_id("request_id", completion.request_id)
    _check_id("prefill_instance_id", completion.prefill_id, required=False)
    _check_id("decode_instance_id", completion.decode_id, required=False)
    _check_id("record_id", completion.record_id, required=False)
    check_text(completion.reason, "reason", error=InvalidTelemetryError)
    if completion.ok and not completion.prefill_id and not completion.decode_id:
        # Only failed requests may lack instances (they failed before placement).
        raise InvalidTelemetryError(f"request {completion.request_id!r}: no instance id")
    owner = f"request {completion.request_id!r}"
    for name in (
        "input_tokens",
        "output_tokens",
        "ttft_ms",
        "mean_itl_ms",
        "finished_at_s",
        "arrival_s",
        "energy_j",
        "idle_energy_j",
    ):
        _check_non_negative(owner, name, getattr(completion, name))
    if completion.slo is not None:
        validate_slo(completion.slo, owner)


def validate_slo(slo: SloTarget, owner: str = "SLO") -> None:
    for name, value in (("ttft_ms", slo.ttft_ms), ("itl_ms", slo.itl_ms)):
        problem = slo_target_problem(name, value)
        if problem is not None:
            raise InvalidTelemetryError(f"{owner}: SLO {problem}")


def validate_window(window_s: float) -> None:
    if not math.isfinite(window_s) or window_s <= 0:
        raise InvalidTelemetryError(f"window_s must be a finite number > 0, got {window_s}")
