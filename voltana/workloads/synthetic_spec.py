"""A one-string syntax for synthetic workloads, so a CLI flag can name one.

    [synthetic:]PROCESS:KEY=VALUE[,KEY=VALUE...]

PROCESS is ``poisson``, ``bursty``, ``constant``, ``ramp`` or ``diurnal``. Keys:

    rate=R           mean arrival rate, requests/s (required)
    duration=S       arrivals in [0, S) seconds            } at least one of the two;
    count=N          at most N requests                    } with both, the first reached wins
    cv=C             bursty only: coefficient of variation of inter-arrival gaps (default 2)
    rise=F           ramp only: the rate rises linearly to F times its start (default 4)
    period=S         diurnal only: period of the sine-shaped rate (default: the duration)
    depth=D          diurnal only: relative swing of the rate, 0..1 (default 0.8)
    input=M          input tokens: fixed at M, or the mean of a lognormal with input_median
    input_median=D   input tokens are lognormal with mean M and median D (needs input)
    input_max=X      clip input tokens at X
    output=..., output_median=..., output_max=...   the same for output tokens
    seed=K           random seed (default 0)

Without ``input``/``output`` the lengths follow the Azure 2023 conversation trace
(lognormal, mean/median 1155/1020 input and 211/129 output tokens). Example:
``synthetic:poisson:rate=10,duration=60,input=1000,output=200,seed=1``.
"""

from __future__ import annotations

import math
from typing import cast

from voltana.errors import ConfigError
from voltana.workloads.synthetic import (
    ARRIVAL_PROCESSES,
    AZURE_CONV_INPUT,
    AZURE_CONV_OUTPUT,
    ArrivalProcess,
    SyntheticSpec,
    TokenLengths,
)

SYNTHETIC_PREFIX = "synthetic:"

_FLOAT_KEYS = (
    "rate",
    "duration",
    "cv",
    "rise",
    "period",
    "depth",
    "input",
    "input_median",
    "output",
    "output_median",
)
_INT_KEYS = ("count", "seed", "input_max", "output_max")
_KEYS = _FLOAT_KEYS + _INT_KEYS


def is_synthetic_spec(text: str) -> bool:
    """Whether a --trace value names a synthetic workload rather than a file."""
    return text.startswith(SYNTHETIC_PREFIX)


def parse_synthetic_spec(text: str) -> SyntheticSpec:
    """The spec a string describes (``synthetic:`` prefix optional); ConfigError if malformed."""
    try:
        return _parse(text.removeprefix(SYNTHETIC_PREFIX).strip())
    except ConfigError as error:
        raise ConfigError(f"synthetic workload {text!r}: {error}") from None


def format_synthetic_spec(spec: SyntheticSpec) -> str:
    """The string ``parse_synthetic_spec`` turns back into ``spec`` (for reports and logs)."""
    parts = [f"rate={spec.rate_rps:g}"]
    if spec.duration_s is not None:
        parts.append(f"duration={spec.duration_s:g}")
    if spec.count is not None:
        parts.append(f"count={spec.count}")
    if spec.cv is not None:
        parts.append(f"cv={spec.cv:g}")
    if spec.rise is not None:
        parts.append(f"rise={spec.rise:g}")
    if spec.period_s is not None:
        parts.append(f"period={spec.period_s:g}")
    if spec.depth is not None:
        parts.append(f"depth={spec.depth:g}")
    for side, lengths in (("input", spec.input_tokens), ("output", spec.output_tokens)):
        parts.append(f"{side}={lengths.mean:g}")
        if lengths.median is not None:
            parts.append(f"{side}_median={lengths.median:g}")
        if lengths.max_tokens is not None:
            parts.append(f"{side}_max={lengths.max_tokens}")
    parts.append(f"seed={spec.seed}")
    return f"{SYNTHETIC_PREFIX}{spec.process}:{','.join(parts)}"


def _parse(body: str) -> SyntheticSpec:
    process, _, params_text = body.partition(":")
    process = process.strip()
    if process not in ARRIVAL_PROCESSES:
        raise ConfigError(
            f"unknown arrival process {process!r}; valid: {', '.join(ARRIVAL_PROCESSES)}"
        )
    params = _key_values(params_text)
    if "rate" not in params:
        raise ConfigError("missing rate=REQUESTS_PER_S")
    floats = {key: _float(key, params[key]) for key in _FLOAT_KEYS if key in params}
    ints = {key: _int(key, params[key]) for key in _INT_KEYS if key in params}
    count = ints.get("count")
    seed = ints.get("seed", 0)
    return SyntheticSpec(
        process=cast(ArrivalProcess, process),  # checked against ARRIVAL_PROCESSES above
        rate_rps=floats["rate"],
        duration_s=floats.get("duration"),
        count=count,
        cv=floats.get("cv"),
        rise=floats.get("rise"),
        period_s=floats.get("period"),
        depth=floats.get("depth"),
        input_tokens=_lengths("input", floats, ints, AZURE_CONV_INPUT),
        output_tokens=_lengths("output", floats, ints, AZURE_CONV_OUTPUT),
        seed=seed,
    )


def _key_values(params_text: str) -> dict[str, str]:
    params: dict[str, str] = {}
    for item in params_text.split(","):
        if not item.strip():
            continue
        key, equals, value = item.partition("=")
        key = key.strip()
        if not equals:
            raise ConfigError(f"expected KEY=VALUE, got {item.strip()!r}")
        if key not in _KEYS:
            raise ConfigError(f"unknown key {key!r}; valid: {', '.join(sorted(_KEYS))}")
        if key in params:
            raise ConfigError(f"key {key!r} given twice")
        params[key] = value.strip()
    return params


def _float(key: str, text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise ConfigError(f"{key} {text!r} is not a number") from None
    if not math.isfinite(value):
        raise ConfigError(f"{key} {text!r} is not a finite number")
    return value


def _int(key: str, text: str) -> int:
    try:
        return int(text)
    except ValueError:
        raise ConfigError(f"{key} {text!r} is not an integer") from None


def _lengths(
    side: str, floats: dict[str, float], ints: dict[str, int], default: TokenLengths
) -> TokenLengths:
    mean = floats.get(side)
    median = floats.get(f"{side}_median")
    max_tokens = ints.get(f"{side}_max")
    if mean is None:
        if median is not None:
            raise ConfigError(f"{side}_median needs {side}=MEAN as well")
        return TokenLengths(default.mean, default.median, max_tokens)
    return TokenLengths(mean, median, max_tokens)
