"""The HTTP front door's bodies: OpenAI (/v1/completions, /v1/chat/completions) and SGLang's
/generate, turned into the router's GenerateRequest, and the pipeline's output turned back.

Pure functions (no I/O). Bad bodies raise ``HttpRequestError`` with the HTTP status to answer
and the parameter at fault; a parameter the router cannot honour (tools, response_format,
logprobs, ...) is refused by name unless it asks for nothing, never silently dropped. Voltana's
additions to the OpenAI bodies: ``ttft_slo_ms`` and ``itl_slo_ms`` (the request's SLO),
``ignore_eos`` and ``stop_token_ids`` (as SGLang accepts them); and in ``usage``: ``energy_j``
and ``idle_energy_j``, the GPU energy attributed to the request (docs/energy.md).
"""

from __future__ import annotations

import enum
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from voltana.services.router.http_fields import (
    INT64_MAX,
    INT64_MIN,
    HttpRequestError,
    boolean,
    check_keys,
    integer,
    number,
    object_field,
    shown,
    text,
    token_ids,
)
from voltana.v1 import common_pb2, router_pb2


class ApiKind(enum.Enum):
    COMPLETION = "text_completion"
    CHAT = "chat.completion"
    SGLANG = "sglang"


@dataclass(frozen=True)
class ParsedRequest:
    kind: ApiKind
    request: router_pb2.GenerateRequest
    stream: bool
    include_usage: bool
    model: str


# Parameters every OpenAI body may carry; the rest are refused unless at a neutral value.
_OPENAI_KEYS = frozenset(
    {
        "model", "max_tokens", "temperature", "top_p", "stop", "stop_token_ids", "stream",
        "stream_options", "seed", "presence_penalty", "frequency_penalty", "user",
        "ignore_eos", "ttft_slo_ms", "itl_slo_ms",
    }
)  # fmt: skip
# What the router cannot honour, accepted only at the values that ask for nothing.
_OPENAI_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "n": (None, 1),
    "logprobs": (None, False, 0),
    "logit_bias": (None, {}),
}
_COMPLETION_KEYS = _OPENAI_KEYS | {"prompt"}
_COMPLETION_NEUTRAL = {**_OPENAI_NEUTRAL, "echo": (None, False), "best_of": (None, 1),
                       "suffix": (None, "")}  # fmt: skip
_CHAT_KEYS = _OPENAI_KEYS | {"messages", "max_completion_tokens"}
# No tool calling nor structured output: the router applies no chat template or grammar.
_CHAT_NEUTRAL = {
    **_OPENAI_NEUTRAL,
    "top_logprobs": (None, 0),
    "tools": (None, []),
    "tool_choice": (None, "none"),
    "functions": (None, []),
    "function_call": (None, "none"),
    "parallel_tool_calls": (None,),
    "response_format": (None, {"type": "text"}),
    "store": (None, False),
    "metadata": (None, {}),
    "service_tier": (None, "auto", "default"),
}
_SGLANG_KEYS = frozenset({"text", "input_ids", "sampling_params", "stream", "rid",
                          "ttft_slo_ms", "itl_slo_ms"})  # fmt: skip
# What SGLang's own clients send at their "ask for nothing" values (sglang.bench_serving sends
# lora_path, return_logprob, return_routed_experts and logprob_start_len on every request).
_SGLANG_NEUTRAL: dict[str, tuple[Any, ...]] = {
    "return_logprob": (None, False),
    "logprob_start_len": (None, -1),
    "top_logprobs_num": (None, 0),
    "token_ids_logprob": (None, []),
    "return_text_in_logprobs": (None, False, True),
    "return_routed_experts": (None, False),
    "return_hidden_states": (None, False),
    "lora_path": (None, ""),
}
_SAMPLING_KEYS = frozenset({"max_new_tokens", "temperature", "top_p", "stop", "stop_token_ids",
                            "ignore_eos", "sampling_seed", "presence_penalty",
                            "frequency_penalty"})  # fmt: skip
_SAMPLING_NEUTRAL: dict[str, tuple[Any, ...]] = {"n": (None, 1), "no_stop_trim": (None, False)}


def _stop(value: Any, param: str) -> list[str]:
    if value is None:
        return []
    items = [value] if isinstance(value, str) else value
    if not isinstance(items, list):
        raise HttpRequestError(f"'{param}' must be a string or a list of strings", param=param)
    return [text(item, param) for item in items]


def _common(
    body: Mapping[str, Any],
    request: router_pb2.GenerateRequest,
    max_tokens_name: str,
    *,
    seed_name: str = "seed",
    prefix: str = "",
) -> None:
    """Sampling parameters and the SLO, shared by every API (``prefix``: where they sit, for
    error messages)."""
    max_new_tokens = integer(body, max_tokens_name, prefix=prefix)
    if max_new_tokens is not None:
        request.max_new_tokens = max_new_tokens
    for name in ("temperature", "top_p", "presence_penalty", "frequency_penalty"):
        value = number(body, name, float32=True, prefix=prefix)
        if value is not None:
            setattr(request, name, value)
    seed = integer(body, seed_name, INT64_MIN, INT64_MAX, prefix=prefix)
    if seed is not None:
        request.seed = seed
    request.stop.extend(_stop(body.get("stop"), prefix + "stop"))
    stop_ids = body.get("stop_token_ids")
    if stop_ids is not None and stop_ids != []:
        request.stop_token_ids.extend(token_ids(stop_ids, prefix + "stop_token_ids"))
    request.ignore_eos = boolean(body, "ignore_eos", prefix=prefix)
    ttft_slo_ms, itl_slo_ms = number(body, "ttft_slo_ms"), number(body, "itl_slo_ms")
    if ttft_slo_ms is not None or itl_slo_ms is not None:
        request.slo.CopyFrom(
            common_pb2.SloTarget(ttft_ms=ttft_slo_ms or 0.0, itl_ms=itl_slo_ms or 0.0)
        )


def _model(body: Mapping[str, Any], served_model: str) -> str:
    model = body.get("model", served_model)
    if not isinstance(model, str) or not model:
        raise HttpRequestError("'model' must be a non-empty string", param="model")
    if model != served_model:
        raise HttpRequestError(
            f"the model {shown(model)} does not exist; this router serves {served_model!r}",
            404,
            param="model",
        )
    return model


def _stream_flags(body: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = boolean(body, "stream")
    options = body.get("stream_options")
    if options is None:
        return stream, False
    options = object_field(options, "stream_options")
    return stream, boolean(options, "include_usage", prefix="stream_options.")


def _openai_common(
    body: Mapping[str, Any], served_model: str, request: router_pb2.GenerateRequest, name: str
) -> tuple[str, bool, bool]:
    model = _model(body, served_model)
    user = body.get("user")
    if user is not None:
        text(user, "user")
    _common(body, request, name)
    stream, include_usage = _stream_flags(body)
    return model, stream, include_usage


def parse_completion(body: Any, served_model: str) -> ParsedRequest:
    """An OpenAI /v1/completions body."""
    body = object_field(body, "")
    check_keys(body, _COMPLETION_KEYS, _COMPLETION_NEUTRAL)
    request = router_pb2.GenerateRequest()
    prompt = body.get("prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
        prompt = prompt[0]  # one prompt given as a batch of one
    if isinstance(prompt, str):
        request.text = text(prompt, "prompt")
    elif isinstance(prompt, list) and prompt and not isinstance(prompt[0], str | list):
        request.input_ids.ids.extend(token_ids(prompt, "prompt"))
    else:
        raise HttpRequestError(
            "'prompt' must be a string or a list of token ids (one prompt)", param="prompt"
        )
    model, stream, include_usage = _openai_common(body, served_model, request, "max_tokens")
    return ParsedRequest(ApiKind.COMPLETION, request, stream, include_usage, model)


def _message_text(content: Any, param: str) -> str:
    if isinstance(content, str):
        return text(content, param)
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (isinstance(part, Mapping) and part.get("type") == "text"):
                raise HttpRequestError("only text message parts are supported", param=param)
            parts.append(text(part.get("text", ""), param))
        return "".join(parts)
    raise HttpRequestError(
        "a message's 'content' must be a string or a list of text parts", param=param
    )


def render_chat(messages: Any) -> str:
    """The messages as one prompt. The router has no tokenizer, so no model chat template:
    a plain ``role: content`` transcript that ends with ``assistant:``."""
    if not isinstance(messages, list) or not messages:
        raise HttpRequestError("'messages' must be a non-empty list", param="messages")
    lines = []
    for index, message in enumerate(messages):
        param = f"messages[{index}]"
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise HttpRequestError("every message needs a 'role' and a 'content'", param=param)
        role = text(message["role"], param + ".role")
        lines.append(f"{role}: {_message_text(message.get('content'), param + '.content')}")
    return "\n".join([*lines, "assistant:"])


def parse_chat(body: Any, served_model: str) -> ParsedRequest:
    """An OpenAI /v1/chat/completions body."""
    body = object_field(body, "")
    check_keys(body, _CHAT_KEYS, _CHAT_NEUTRAL)
    request = router_pb2.GenerateRequest(text=render_chat(body.get("messages")))
    # max_completion_tokens is the newer name of max_tokens.
    name = (
        "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    )
    model, stream, include_usage = _openai_common(body, served_model, request, name)
    return ParsedRequest(ApiKind.CHAT, request, stream, include_usage, model)


def parse_sglang(body: Any, served_model: str) -> ParsedRequest:
    """SGLang's native /generate body (one prompt)."""
    body = object_field(body, "")
    check_keys(body, _SGLANG_KEYS, _SGLANG_NEUTRAL)
    request = router_pb2.GenerateRequest()
    prompt_text, input_ids = body.get("text"), body.get("input_ids")
    if (prompt_text is None) == (input_ids is None):
        raise HttpRequestError("give exactly one of 'text' and 'input_ids'")
    if prompt_text is not None:
        if not isinstance(prompt_text, str):
            raise HttpRequestError("'text' must be a string (one prompt)", param="text")
        request.text = text(prompt_text, "text")
    else:
        if isinstance(input_ids, list) and len(input_ids) == 1 and isinstance(input_ids[0], list):
            input_ids = input_ids[0]  # one prompt given as a batch of one
        request.input_ids.ids.extend(token_ids(input_ids, "input_ids"))
    sampling = object_field(body.get("sampling_params") or {}, "sampling_params")
    check_keys(sampling, _SAMPLING_KEYS, _SAMPLING_NEUTRAL, prefix="sampling_params.")
    _common(
        {**sampling, **{k: body[k] for k in ("ttft_slo_ms", "itl_slo_ms") if k in body}},
        request,
        "max_new_tokens",
        seed_name="sampling_seed",
        prefix="sampling_params.",
    )
    rid = body.get("rid")
    if rid is not None:
        request.request_id = text(rid, "rid")
    stream, _ = _stream_flags(body)
    return ParsedRequest(ApiKind.SGLANG, request, stream, False, served_model)


# ---- answers ---------------------------------------------------------------------------------


def usage(completion: router_pb2.Completion) -> dict[str, Any]:
    result: dict[str, Any] = {
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "total_tokens": completion.prompt_tokens + completion.completion_tokens,
    }
    if completion.HasField("energy_j"):
        result["energy_j"] = completion.energy_j
        result["idle_energy_j"] = completion.idle_energy_j
    return result


def openai_finish_reason(reason: str) -> str:
    return reason if reason in ("stop", "length") else "stop"


class OpenAiAnswer:
    """The bodies of one OpenAI request: whole, or as stream chunks."""

    def __init__(self, parsed: ParsedRequest) -> None:
        self.parsed = parsed
        self.id = ("chatcmpl-" if parsed.kind is ApiKind.CHAT else "cmpl-") + uuid.uuid4().hex
        self.created = int(time.time())

    def _envelope(self, object_name: str) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": object_name,
            "created": self.created,
            "model": self.parsed.model,
        }

    def response(self, text: str, completion: router_pb2.Completion) -> dict[str, Any]:
        finish_reason = openai_finish_reason(completion.finish_reason)
        choice: dict[str, Any] = {
            "index": 0,
            "finish_reason": finish_reason,
            "logprobs": None,
            # SGLang's OpenAI server says what stopped it too.
            "matched_stop": matched_stop(completion),
        }
        if self.parsed.kind is ApiKind.CHAT:
            choice["message"] = {"role": "assistant", "content": text}
        else:
            choice["text"] = text
        return {
            **self._envelope(self.parsed.kind.value),
            "choices": [choice],
            "usage": usage(completion),
        }

    def _chunk(self, delta_text: str | None, finish_reason: str | None) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason, "logprobs": None}
        if self.parsed.kind is ApiKind.CHAT:
            choice["delta"] = {"content": delta_text} if delta_text is not None else {}
            return {**self._envelope("chat.completion.chunk"), "choices": [choice]}
        choice["text"] = delta_text or ""
        return {**self._envelope("text_completion"), "choices": [choice]}

    def first_chunks(self) -> list[dict[str, Any]]:
        if self.parsed.kind is not ApiKind.CHAT:
            return []
        first = self._chunk(None, None)
        first["choices"][0]["delta"] = {"role": "assistant", "content": ""}
        return [first]

    def delta_chunk(self, text: str) -> dict[str, Any]:
        return self._chunk(text, None)

    def last_chunks(self, completion: router_pb2.Completion) -> list[dict[str, Any]]:
        chunks = [self._chunk(None, openai_finish_reason(completion.finish_reason))]
        if self.parsed.include_usage:
            usage_chunk = {
                **self._envelope(chunks[0]["object"]),
                "choices": [],
                "usage": usage(completion),
            }
            chunks.append(usage_chunk)
        return chunks


def matched_stop(completion: router_pb2.Completion) -> str | int | None:
    """The stop string or token id that ended the request, if the engine said."""
    which = completion.WhichOneof("matched_stop")
    return None if which is None else getattr(completion, which)


def sglang_finish_reason(completion: router_pb2.Completion) -> dict[str, Any]:
    """SGLang's finish_reason object: stop with what matched, length with the length."""
    reason = completion.finish_reason or "stop"
    if reason == "length":
        return {"type": "length", "length": completion.completion_tokens}
    if reason == "stop":
        return {"type": "stop", "matched": matched_stop(completion)}
    return {"type": reason}


def sglang_meta(completion: router_pb2.Completion) -> dict[str, Any]:
    """SGLang's meta_info of a finished request (plus the router's placement and energy)."""
    meta: dict[str, Any] = {
        "id": completion.request_id,
        "finish_reason": sglang_finish_reason(completion),
        "prompt_tokens": completion.prompt_tokens,
        "completion_tokens": completion.completion_tokens,
        "e2e_latency": completion.e2e_latency_ms / 1000.0,
        "voltana": {
            "prefill_instance": completion.prefill_instance,
            "decode_instance": completion.decode_instance,
            "ttft_ms": completion.ttft_ms,
            "mean_itl_ms": completion.mean_itl_ms,
        },
    }
    if completion.HasField("energy_j"):
        meta["voltana_energy"] = {
            "energy_j": completion.energy_j,
            "idle_energy_j": completion.idle_energy_j,
        }
    return meta


def error_body(message: str, status: int, param: str | None = None) -> dict[str, Any]:
    """OpenAI's error object (SGLang answers errors the same way)."""
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        405: "invalid_request_error",
        408: "timeout_error",
        413: "invalid_request_error",
        429: "rate_limit_error",
    }.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": param, "code": status}}
