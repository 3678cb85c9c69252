"""Flags several settings dataclasses share: the listen address, the hardware, the drain, and
the fields composed by `voltana serve`'s dedicated helpers (SLO, security, metrics)."""

from __future__ import annotations

from collections.abc import Mapping

from voltana.flags.spec import CliSpec, Flag, composed, flag
from voltana.flags.values import host_port, non_negative_float, positive_int
from voltana.hardware import GPU_CATALOG, MODEL_CATALOG

LISTEN = Flag(
    "address to serve on (0.0.0.0:PORT serves other hosts); port 0 = any free port",
    name="--listen",
    parse=host_port,
    metavar="HOST:PORT",
)


def listen_flag(port: int) -> Mapping[str, CliSpec]:
    """``--listen``, loopback on the service's well-known ``port`` (the dataclasses' default,
    port 0, picks a free one: what tests and the one-process stack want)."""
    return flag(LISTEN, default=f"127.0.0.1:{port}")


def drain_flag(after: str) -> Mapping[str, CliSpec]:
    """``--drain-s``: how long a stopping service lets running requests finish; ``after``
    says what happens next."""
    return flag(
        f"on SIGTERM/SIGINT, let running requests finish this long; {after}",
        name="--drain-s",
        parse=non_negative_float,
    )


# The hardware policies predict for, or a simulated engine runs on.
GPU = Flag(f"GPU type: {', '.join(GPU_CATALOG)}", name="--gpu")
MODEL = Flag(f"model: {', '.join(MODEL_CATALOG)}", name="--model")
TP = Flag("GPUs per instance (tensor parallelism)", name="--tp", parse=positive_int)
MODEL_CONFIG = Flag(
    "Hugging Face config.json of a model outside the catalog (replaces --model)",
    name="--model-config",
    metavar="CONFIG_JSON",
)
PROFILE = Flag(
    "a measured profile (voltana profile): its GPU, model, TP and measurements replace --gpu, "
    "--model, --model-config and --tp",
    name="--profile",
    metavar="PROFILE.csv",
)

# Fields `voltana serve` builds with its own helpers (voltana.cli).
SLO = composed("--ttft-slo-ms, --itl-slo-ms, --ttft-slo-per-1k-ms (options.add_slo_args)")
SECURITY = composed("--token-file, --insecure-no-auth, --tls-* (security_opts)")
METRICS = composed("--metrics-port, --no-metrics (serve's metrics flags)")
