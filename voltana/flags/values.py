"""Readers of command-line values: text in, a checked value out, or ``ArgumentTypeError`` with
one line that says what is wrong (argparse turns it into a usage error, exit 2)."""

from __future__ import annotations

import argparse
import math


def positive_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be > 0")
    return value


def non_negative_float(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
    if not (math.isfinite(value) and value >= 0):
        raise argparse.ArgumentTypeError(f"{text!r} must be a finite number >= 0")
    return value


def positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 1")
    return value


def non_negative_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 0:
        raise argparse.ArgumentTypeError(f"{text!r} must be >= 0")
    return value


def port_number(text: str) -> int:
    try:
        port = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a port number") from None
    if not 0 <= port <= 65535:
        raise argparse.ArgumentTypeError(f"port {text!r} is not in 0..65535")
    return port


def host_port(text: str) -> str:
    """``host:port`` (IPv6 hosts in brackets); the port must be a number in 0..65535."""
    host, sep, port = text.rpartition(":")
    if not sep or not host:
        raise argparse.ArgumentTypeError(f"{text!r} is not HOST:PORT")
    port_number(port)
    return text


def host_ports(text: str) -> str:
    """One or more ``host:port`` separated by commas (several active-active routers)."""
    return ",".join(host_port(part.strip()) for part in text.split(","))


def gpu_ref(text: str) -> tuple[str, int]:
    """``N`` (a GPU of --agent) or ``HOST:PORT/N`` (of another node agent) → (address, N)."""
    address, slash, index = text.rpartition("/")
    if slash:
        host_port(address)
    return address, non_negative_int(index)


def instance_binding(text: str) -> tuple[str, int | tuple[int, ...]]:
    """``ID=GPU_INDEX`` → (ID, index); ``ID=0,1`` (a tensor-parallel instance) → (ID, (0, 1))."""
    instance_id, sep, indices = text.rpartition("=")
    if not sep or not instance_id or not indices:
        raise argparse.ArgumentTypeError(f"{text!r} is not ID=GPU_INDEX or ID=GPU,GPU,...")
    parsed = tuple(non_negative_int(index) for index in indices.split(","))
    return instance_id, parsed[0] if len(parsed) == 1 else parsed
