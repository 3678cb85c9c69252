"""Checks a GenerateRequest against the router's limits and turns it into plain values."""

from __future__ import annotations

import math
import uuid
from dataclasses import dataclass

from voltana.contract.state import RequestSpec, SloTarget
from voltana.engine.tokenizer import count_text_tokens
from voltana.rpc.limits import MAX_ID_CHARS, check_id, check_text, slo_target_problem
from voltana.services.router.errors import InvalidGenerateRequestError
from voltana.services.router.settings import RouterSettings
from voltana.v1 import router_pb2

MAX_REQUEST_ID_CHARS = MAX_ID_CHARS
MAX_STOP_STRINGS = 16
MAX_STOP_CHARS = 256
MAX_STOP_TOKEN_IDS = 64
# OpenAI's range of presence_penalty and frequency_penalty (SGLang's too).
MAX_PENALTY = 2.0


@dataclass(frozen=True, slots=True)
class ValidatedRequest:
    """A request the router accepted. Exactly one of ``text`` and ``input_ids`` is set."""

    request_id: str
    text: str | None
    input_ids: tuple[int, ...] | None
    # Exact for token ids; estimated for text (the router has no tokenizer).
    prompt_tokens: int
    max_new_tokens: int
    temperature: float | None
    top_p: float | None
    ignore_eos: bool
    stop: tuple[str, ...]
    slo: SloTarget
    stop_token_ids: tuple[int, ...] = ()
    seed: int | None = None
    presence_penalty: float | None = None
    frequency_penalty: float | None = None

    def spec(self, arrival_s: float) -> RequestSpec:
        """What the routing policy sees (``arrival_s`` on the snapshot's clock)."""
        return RequestSpec(
            input_tokens=self.prompt_tokens,
            max_output_tokens=self.max_new_tokens,
            slo=self.slo,
            arrival_s=arrival_s,
        )


def estimate_text_tokens(text: str, chars_per_token: float) -> int:
    """Token count of ``text`` by the simulated engines' tokenizer rule (at least 1 for a
    non-empty prompt): exact on them, an estimate against a real tokenizer."""
    return max(1, count_text_tokens(text, chars_per_token))


def _prompt(
    request: router_pb2.GenerateRequest, settings: RouterSettings
) -> tuple[str | None, tuple[int, ...] | None, int]:
    which = request.WhichOneof("prompt")
    if which is None:
        raise InvalidGenerateRequestError("the request needs a prompt: text or input_ids")
    if which == "text":
        text = request.text
        if not text.strip():
            raise InvalidGenerateRequestError("the prompt is empty")
        tokens = estimate_text_tokens(text, settings.chars_per_token_estimate)
        if tokens > settings.max_prompt_tokens:
            raise InvalidGenerateRequestError(
                f"the prompt is too long: about {tokens} tokens ({len(text)} characters), "
                f"the limit is {settings.max_prompt_tokens} tokens"
            )
        return text, None, tokens
    ids = tuple(request.input_ids.ids)
    if not ids:
        raise InvalidGenerateRequestError("the prompt is empty (input_ids has no token)")
    if len(ids) > settings.max_prompt_tokens:
        raise InvalidGenerateRequestError(
            f"the prompt is too long: {len(ids)} tokens, the limit is "
            f"{settings.max_prompt_tokens} tokens"
        )
    negative = next((token for token in ids if token < 0), None)
    if negative is not None:
        raise InvalidGenerateRequestError(f"input_ids holds a negative token id ({negative})")
    _check_vocabulary(ids, "input_ids", settings.vocab_size)
    return None, ids, len(ids)


def _check_vocabulary(ids: tuple[int, ...], name: str, vocab_size: int) -> None:
    """Every id inside the served model's vocabulary (0: not checked)."""
    if not vocab_size:
        return
    outside = next((token for token in ids if token >= vocab_size), None)
    if outside is not None:
        raise InvalidGenerateRequestError(
            f"{name} holds token id {outside}, outside the model's vocabulary (0..{vocab_size - 1})"
        )


def _max_new_tokens(request: router_pb2.GenerateRequest, settings: RouterSettings) -> int:
    if not request.HasField("max_new_tokens"):
        return settings.default_max_new_tokens
    value = request.max_new_tokens
    if value <= 0:
        raise InvalidGenerateRequestError(f"max_new_tokens must be > 0, got {value}")
    if value > settings.max_new_tokens_limit:
        raise InvalidGenerateRequestError(
            f"max_new_tokens {value} is over the limit of {settings.max_new_tokens_limit}"
        )
    return value


def _sampling(request: router_pb2.GenerateRequest) -> tuple[float | None, float | None]:
    temperature = request.temperature if request.HasField("temperature") else None
    if temperature is not None and not (math.isfinite(temperature) and temperature >= 0):
        raise InvalidGenerateRequestError(f"temperature must be >= 0, got {temperature}")
    top_p = request.top_p if request.HasField("top_p") else None
    if top_p is not None and not (math.isfinite(top_p) and 0 < top_p <= 1):
        raise InvalidGenerateRequestError(f"top_p must be in (0, 1], got {top_p}")
    return temperature, top_p


def _penalty(request: router_pb2.GenerateRequest, name: str) -> float | None:
    if not request.HasField(name):  # type: ignore[arg-type]
        return None
    value = float(getattr(request, name))
    if not (math.isfinite(value) and -MAX_PENALTY <= value <= MAX_PENALTY):
        raise InvalidGenerateRequestError(
            f"{name} must be in [-{MAX_PENALTY:g}, {MAX_PENALTY:g}], got {value}"
        )
    return value


def _stop_token_ids(request: router_pb2.GenerateRequest, vocab_size: int) -> tuple[int, ...]:
    ids = tuple(request.stop_token_ids)
    if len(ids) > MAX_STOP_TOKEN_IDS:
        raise InvalidGenerateRequestError(
            f"at most {MAX_STOP_TOKEN_IDS} stop token ids, got {len(ids)}"
        )
    negative = next((token for token in ids if token < 0), None)
    if negative is not None:
        raise InvalidGenerateRequestError(f"stop_token_ids holds a negative id ({negative})")
    _check_vocabulary(ids, "stop_token_ids", vocab_size)
    return ids


def _slo(request: router_pb2.GenerateRequest, cluster_slo: SloTarget) -> SloTarget:
    """The request's own targets; a target left at 0 falls back to the cluster's."""
    if not request.HasField("slo"):
        return cluster_slo
    ttft_ms, itl_ms = request.slo.ttft_ms, request.slo.itl_ms
    for name, value in (("ttft_ms", ttft_ms), ("itl_ms", itl_ms)):
        # 0 keeps the cluster's target.
        problem = slo_target_problem(f"slo.{name}", value) if value != 0 else None
        if problem is not None:
            raise InvalidGenerateRequestError(problem)
    return SloTarget(
        ttft_ms=ttft_ms or cluster_slo.ttft_ms,
        itl_ms=itl_ms or cluster_slo.itl_ms,
    )


def _request_id(request: router_pb2.GenerateRequest) -> str:
    request_id = request.request_id
    if not request_id:
        return uuid.uuid4().hex
    check_id(request_id, "request_id", error=InvalidGenerateRequestError)
    return request_id


def _stop(request: router_pb2.GenerateRequest) -> tuple[str, ...]:
    stop = tuple(request.stop)
    if len(stop) > MAX_STOP_STRINGS:
        raise InvalidGenerateRequestError(
            f"at most {MAX_STOP_STRINGS} stop strings, got {len(stop)}"
        )
    if any(not item for item in stop):
        raise InvalidGenerateRequestError("stop strings must not be empty")
    for item in stop:
        check_text(
            item, "a stop string", max_chars=MAX_STOP_CHARS, error=InvalidGenerateRequestError
        )
    return stop


def validate_request(
    request: router_pb2.GenerateRequest, settings: RouterSettings
) -> ValidatedRequest:
    """The accepted request; raises InvalidGenerateRequestError with a readable message."""
    text, input_ids, prompt_tokens = _prompt(request, settings)
    temperature, top_p = _sampling(request)
    return ValidatedRequest(
        request_id=_request_id(request),
        text=text,
        input_ids=input_ids,
        prompt_tokens=prompt_tokens,
        max_new_tokens=_max_new_tokens(request, settings),
        temperature=temperature,
        top_p=top_p,
        ignore_eos=request.ignore_eos,
        stop=_stop(request),
        slo=_slo(request, settings.slo),
        stop_token_ids=_stop_token_ids(request, settings.vocab_size),
        seed=request.seed if request.HasField("seed") else None,
        presence_penalty=_penalty(request, "presence_penalty"),
        frequency_penalty=_penalty(request, "frequency_penalty"),
    )
