"""SGLang's HTTP ``/generate`` protocol: request parsing and response bodies (no I/O).

Only what the simulated engine needs: ``max_new_tokens``, ``stop`` and ``stop_token_ids``
(``voltana.engine.stopping``; ``ignore_eos`` turns the token ids off, as in SGLang) shape the
output; other sampling parameters are accepted and ignored (the simulated tokens are fixed).
``return_logprob`` is honoured with made-up but well-formed logprobs (``voltana.engine.logprobs``).
"""

from __future__ import annotations

import json
import uuid
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from voltana.engine.errors import EngineRequestError
from voltana.engine.stopping import FinishReason as FinishReason
from voltana.engine.stopping import StopCriteria
from voltana.engine.tokenizer import ToyTokenizer

# SGLang's default when sampling_params has no max_new_tokens.
DEFAULT_MAX_NEW_TOKENS = 128
# SGLang's --disaggregation-bootstrap-port default.
DEFAULT_BOOTSTRAP_PORT = 8998
MAX_BOOTSTRAP_ROOM = 2**63 - 1
SSE_DONE = b"data: [DONE]\n\n"
# SGLang caps neither; these keep one request's stop checks cheap.
MAX_STOP_STRINGS = 64
MAX_STOP_TOKEN_IDS = 1024


@dataclass(frozen=True, slots=True)
class BootstrapTarget:
    """Where a PD request's KV cache comes from: the prefill's bootstrap endpoint and room."""

    host: str | None
    port: int | None
    room: int


@dataclass(frozen=True, slots=True)
class LogprobOptions:
    """What ``return_logprob`` asks for, in SGLang's terms."""

    # First prompt position with input logprobs; -1 (SGLang's default) = none of the prompt.
    start_len: int = -1
    # Alternatives per position (``top_logprobs_num``); 0 = only the chosen token's.
    top_num: int = 0
    # Include each token's text (``return_text_in_logprobs``); else its text is null.
    with_text: bool = False


@dataclass(frozen=True, slots=True)
class GenerateRequest:
    rid: str
    input_ids: tuple[int, ...]
    max_new_tokens: int
    stream: bool
    bootstrap: BootstrapTarget | None
    # None unless ``return_logprob`` is true.
    logprobs: LogprobOptions | None = None
    stop: StopCriteria = field(default_factory=StopCriteria)

    @property
    def prompt_tokens(self) -> int:
        return len(self.input_ids)


def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _prompt_ids(body: Mapping[str, Any], tokenizer: ToyTokenizer) -> tuple[int, ...]:
    text = body.get("text")
    input_ids = body.get("input_ids")
    if text is None and input_ids is None:
        raise EngineRequestError("either 'text' or 'input_ids' must be given")
    if text is not None and input_ids is not None:
        raise EngineRequestError("give either 'text' or 'input_ids', not both")
    if text is not None:
        if isinstance(text, list):
            raise EngineRequestError("batched requests (a list of texts) are not supported")
        if not isinstance(text, str):
            raise EngineRequestError("'text' must be a string")
        ids = tokenizer.encode(text)
    else:
        if not isinstance(input_ids, list):
            raise EngineRequestError("'input_ids' must be a list of integers")
        if input_ids and isinstance(input_ids[0], list):
            raise EngineRequestError("batched requests (a list of input_ids) are not supported")
        if not all(_is_int(token) for token in input_ids):
            raise EngineRequestError("'input_ids' must be a list of integers")
        bad = [token for token in input_ids if not 0 <= token < tokenizer.vocab_size]
        if bad:
            raise EngineRequestError(
                f"token id {bad[0]} is outside the vocabulary (0..{tokenizer.vocab_size - 1})"
            )
        ids = list(input_ids)
    if not ids:
        raise EngineRequestError("the prompt is empty")
    return tuple(ids)


def _sampling_params(body: Mapping[str, Any]) -> Mapping[str, Any]:
    sampling_params = body.get("sampling_params")
    if sampling_params is None:
        return {}
    if not isinstance(sampling_params, dict):
        raise EngineRequestError("'sampling_params' must be an object")
    return sampling_params


def _max_new_tokens(sampling_params: Mapping[str, Any]) -> int:
    value = sampling_params.get("max_new_tokens")
    if value is None:
        return DEFAULT_MAX_NEW_TOKENS
    if not _is_int(value):
        raise EngineRequestError(f"max_new_tokens must be an integer, got {value!r}")
    if value < 0:  # 0 is valid: prefill only, no output token (SGLang accepts it too)
        raise EngineRequestError(f"max_new_tokens must be >= 0, got {value}")
    return int(value)


def _stop_criteria(sampling_params: Mapping[str, Any], vocab_size: int) -> StopCriteria:
    strings = sampling_params.get("stop")
    if strings is None:
        strings = []
    elif isinstance(strings, str):
        strings = [strings]
    if not isinstance(strings, list) or not all(isinstance(s, str) and s for s in strings):
        raise EngineRequestError("'stop' must be a non-empty string or a list of them")
    token_ids = sampling_params.get("stop_token_ids") or []
    if not isinstance(token_ids, list) or not all(_is_int(t) for t in token_ids):
        raise EngineRequestError("'stop_token_ids' must be a list of integers")
    if len(strings) > MAX_STOP_STRINGS or len(token_ids) > MAX_STOP_TOKEN_IDS:
        raise EngineRequestError(
            f"at most {MAX_STOP_STRINGS} stop strings and {MAX_STOP_TOKEN_IDS} stop token ids"
        )
    bad = [token for token in token_ids if not 0 <= token < vocab_size]
    if bad:
        raise EngineRequestError(f"stop token id {bad[0]} is outside the vocabulary")
    ignore_eos = sampling_params.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise EngineRequestError("'ignore_eos' must be a boolean")
    # As in SGLang: ignore_eos skips every token-based stop, stop strings still apply.
    return StopCriteria(tuple(strings), frozenset() if ignore_eos else frozenset(token_ids))


def _non_negative_int(body: Mapping[str, Any], name: str, default: int) -> int:
    value = body.get(name)
    if value is None:
        return default
    if not _is_int(value) or value < 0:
        raise EngineRequestError(f"{name!r} must be an integer >= 0, got {value!r}")
    return int(value)


def _logprob_options(body: Mapping[str, Any]) -> LogprobOptions | None:
    flag = body.get("return_logprob", False)
    if flag is None:
        flag = False
    if not isinstance(flag, bool):
        raise EngineRequestError("'return_logprob' must be a boolean")
    if not flag:
        return None
    start = body.get("logprob_start_len", -1)
    if start is None:
        start = -1
    if not _is_int(start) or start < -1:
        raise EngineRequestError(f"'logprob_start_len' must be an integer >= -1, got {start!r}")
    with_text = body.get("return_text_in_logprobs", False)
    if not isinstance(with_text, bool):
        raise EngineRequestError("'return_text_in_logprobs' must be a boolean")
    return LogprobOptions(
        start_len=int(start),
        top_num=_non_negative_int(body, "top_logprobs_num", 0),
        with_text=with_text,
    )


def _bootstrap(body: Mapping[str, Any]) -> BootstrapTarget | None:
    host = body.get("bootstrap_host")
    port = body.get("bootstrap_port")
    room = body.get("bootstrap_room")
    if host is None and port is None and room is None:
        return None
    if host is not None and not isinstance(host, str):
        raise EngineRequestError("'bootstrap_host' must be a string")
    if port is not None and not (_is_int(port) and 0 < port <= 65535):
        raise EngineRequestError(f"'bootstrap_port' must be a port number, got {port!r}")
    if room is None:
        raise EngineRequestError("'bootstrap_room' is required with bootstrap_host/port")
    if not (_is_int(room) and 0 <= room <= MAX_BOOTSTRAP_ROOM):
        raise EngineRequestError(f"'bootstrap_room' must be an integer in 0..2^63-1, got {room!r}")
    return BootstrapTarget(host, port, room)


def parse_generate_request(body: object, tokenizer: ToyTokenizer) -> GenerateRequest:
    """Validate a ``/generate`` body; raises ``EngineRequestError`` (HTTP 400) when invalid."""
    if not isinstance(body, dict):
        raise EngineRequestError("the request body must be a JSON object")
    rid = body.get("rid")
    if rid is None:
        rid = uuid.uuid4().hex
    elif not isinstance(rid, str) or not rid:
        raise EngineRequestError("'rid' must be a non-empty string")
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise EngineRequestError("'stream' must be a boolean")
    sampling_params = _sampling_params(body)
    return GenerateRequest(
        rid=rid,
        input_ids=_prompt_ids(body, tokenizer),
        max_new_tokens=_max_new_tokens(sampling_params),
        stream=stream,
        bootstrap=_bootstrap(body),
        logprobs=_logprob_options(body),
        stop=_stop_criteria(sampling_params, tokenizer.vocab_size),
    )


def length_finish(length: int) -> FinishReason:
    return {"type": "length", "length": length}


def abort_finish(message: str) -> FinishReason:
    return {"type": "abort", "message": message}


def meta_info(
    rid: str,
    prompt_tokens: int,
    completion_tokens: int,
    finish_reason: FinishReason | None,
    e2e_latency_s: float | None = None,
    logprobs: Mapping[str, Any] | None = None,
    first_token_latency_s: float | None = None,
) -> dict[str, Any]:
    """``meta_info`` of a response or stream chunk; ``logprobs`` adds SGLang's logprob keys.

    The keys real SGLang (0.5) sends on every chunk, with what a simulated engine knows;
    ``e2e_latency`` and ``first_token_latency`` come with the last one, as SGLang's. SGLang's
    wall-clock timestamps (``request_received_ts``, ``forward_entry_time`` ...) and its
    ``queue_time`` and ``decode_throughput`` are left out.
    """
    meta: dict[str, Any] = {
        "id": rid,
        "finish_reason": finish_reason,
        "prompt_tokens": prompt_tokens,
        "weight_version": "default",
        "num_retractions": 0,
        "reasoning_tokens": 0,
        "completion_tokens": completion_tokens,
        "cached_tokens": 0,
        "cached_tokens_details": None,
        "dp_rank": None,
    }
    if e2e_latency_s is not None:
        meta["e2e_latency"] = e2e_latency_s
    if first_token_latency_s is not None:
        meta["first_token_latency"] = first_token_latency_s
    if logprobs:
        meta.update(logprobs)
    return meta


def error_body(message: str, status: int) -> dict[str, Any]:
    return {"error": {"message": message, "code": status}}


def sse_event(payload: Mapping[str, Any]) -> bytes:
    return b"data: " + json.dumps(payload, separators=(",", ":")).encode() + b"\n\n"
