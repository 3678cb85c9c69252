"""Flat string encoding of the telemetry dataclasses, for Redis hashes and JSON members."""

from __future__ import annotations

import dataclasses
import functools
import json
from collections.abc import Callable, Mapping
from typing import Any, TypeVar, cast

from voltana.contract.instances import GpuRef
from voltana.contract.state import Phase, SloTarget
from voltana.services.telemetry.errors import CorruptTelemetryError

T = TypeVar("T")

# Field annotations (strings, thanks to `from __future__ import annotations`) -> decoder.
_DECODERS: dict[str, Callable[[str], Any]] = {
    "str": str,
    "int": int,
    "float": float,
    "bool": lambda text: text == "1",
    "Phase": Phase,
    "float | None": lambda text: None if text == "" else float(text),
    "SloTarget | None": lambda text: None if text == "" else _decode_slo(text),
    "tuple[GpuRef, ...]": lambda text: _decode_gpu_refs(text),
}


def _decode_gpu_refs(text: str) -> tuple[GpuRef, ...]:
    return tuple(GpuRef(str(address), int(index)) for address, index in json.loads(text or "[]"))


def _decode_slo(text: str) -> SloTarget:
    # "ttft,itl" (older records) or "ttft,itl,per-1k-tokens".
    return SloTarget(*(float(part) for part in text.split(",")))


def _encode_value(value: object) -> str:
    if value is None:
        return ""
    if isinstance(value, Phase):
        return value.value
    if isinstance(value, SloTarget):
        return f"{value.ttft_ms!r},{value.itl_ms!r},{value.ttft_ms_per_1k_tokens!r}"
    if isinstance(value, bool):
        return "1" if value else "0"
    if isinstance(value, float):
        return repr(value)
    if isinstance(value, tuple):  # GPU references of a tensor-parallel instance
        return json.dumps([list(item) for item in value], separators=(",", ":"))
    return str(value)


def encode_fields(obj: Any) -> dict[str, str]:
    """Every dataclass field of ``obj`` as a string (None becomes "")."""
    return {f.name: _encode_value(getattr(obj, f.name)) for f in dataclasses.fields(obj)}


@functools.cache
def _field_decoders(cls: type[Any]) -> tuple[tuple[str, Callable[[str], Any]], ...]:
    """(name, decoder) of each field of ``cls``, worked out once per class (a reload decodes
    up to a hundred thousand completions)."""
    return tuple((f.name, _DECODERS[str(f.type)]) for f in dataclasses.fields(cls))


def decode_fields(cls: type[T], mapping: Mapping[str, str]) -> T:
    """Rebuild a dataclass; fields missing from ``mapping`` take their defaults."""
    try:
        values = {
            name: decode(mapping[name])
            for name, decode in _field_decoders(cast(type, cls))
            if name in mapping
        }
        return cls(**values)
    except (KeyError, TypeError, ValueError, AttributeError) as exc:
        raise CorruptTelemetryError(f"cannot decode stored {cls.__name__}: {exc!r}") from exc


def encode_json(obj: Any) -> str:
    return json.dumps(encode_fields(obj), sort_keys=True, separators=(",", ":"))


def decode_json(cls: type[T], text: str) -> T:
    try:
        mapping = json.loads(text)
    except json.JSONDecodeError as exc:
        raise CorruptTelemetryError(f"cannot decode stored {cls.__name__}: {exc}") from exc
    return decode_fields(cls, mapping)
