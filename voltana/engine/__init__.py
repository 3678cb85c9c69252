"""Engines Voltana serves through: a simulated SGLang server and the SGLang HTTP client."""

from voltana.engine.clock import ScaledClock
from voltana.engine.core import engine_phase
from voltana.engine.errors import (
    EngineError,
    EngineRequestError,
    EngineTimeoutError,
    EngineUnavailableError,
)
from voltana.engine.kv_handoff import KvHandoff, KvMailbox
from voltana.engine.prometheus import PrometheusSample, parse_prometheus_text
from voltana.engine.reporter import InstanceSampleSink
from voltana.engine.settings import EngineMode, SimEngineSettings
from voltana.engine.sglang_client import SglangHttpClient, metrics_by_name
from voltana.engine.sim_engine import SimEngine
from voltana.engine.tokenizer import ToyTokenizer

__all__ = [
    "EngineError",
    "EngineMode",
    "EngineRequestError",
    "EngineTimeoutError",
    "EngineUnavailableError",
    "InstanceSampleSink",
    "KvHandoff",
    "KvMailbox",
    "PrometheusSample",
    "ScaledClock",
    "SglangHttpClient",
    "SimEngine",
    "SimEngineSettings",
    "ToyTokenizer",
    "engine_phase",
    "metrics_by_name",
    "parse_prometheus_text",
]
