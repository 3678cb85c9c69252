"""The HTTP front door's bodies: OpenAI (/v1/completions, /v1/chat/completions) and SGLang's
/generate, turned into the router's GenerateRequest, and the pipeline's output turned back.

Pure functions (no I/O). Bad bodies raise ``HttpRequestError`` with the HTTP status to answer.
Voltana's additions to the OpenAI bodies: ``ttft_slo_ms`` and ``itl_slo_ms`` (the request's
SLO), ``ignore_eos`` (as SGLang accepts it); and in ``usage``: ``energy_j`` and
``idle_energy_j``, the GPU energy attributed to the request (docs/energy.md).
"""

from __future__ import annotations

import enum
import time
import uuid
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from voltana.v1 import common_pb2, router_pb2


class HttpRequestError(Exception):
    """A body the front door refuses; ``status`` is the HTTP status to answer with."""

    def __init__(self, message: str, status: int = 400) -> None:
        super().__init__(message)
        self.message = message
        self.status = status


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


def _object(body: Any) -> Mapping[str, Any]:
    if not isinstance(body, Mapping):
        raise HttpRequestError("the request body must be a JSON object")
    return body


def _number(body: Mapping[str, Any], name: str) -> float | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise HttpRequestError(f"'{name}' must be a number, got {value!r}"[:300])
    return float(value)


def _integer(body: Mapping[str, Any], name: str) -> int | None:
    value = body.get(name)
    if value is None:
        return None
    if isinstance(value, bool) or not isinstance(value, int):
        raise HttpRequestError(f"'{name}' must be an integer, got {value!r}"[:300])
    return value


def _stop(value: Any) -> list[str]:
    if value is None:
        return []
    if isinstance(value, str):
        return [value]
    if isinstance(value, list) and all(isinstance(item, str) for item in value):
        return list(value)
    raise HttpRequestError("'stop' must be a string or a list of strings")


def _token_ids(value: Any, name: str) -> list[int] | None:
    if isinstance(value, list) and value and all(type(item) is int for item in value):
        return list(value)
    if isinstance(value, list) and len(value) == 1:
        return _token_ids(value[0], name)
    return None


def _common(
    body: Mapping[str, Any], request: router_pb2.GenerateRequest, max_tokens_name: str
) -> None:
    """Sampling parameters, SLO and request id shared by every API."""
    max_new_tokens = _integer(body, max_tokens_name)
    if max_new_tokens is not None:
        request.max_new_tokens = max_new_tokens
    temperature = _number(body, "temperature")
    if temperature is not None:
        request.temperature = temperature
    top_p = _number(body, "top_p")
    if top_p is not None:
        request.top_p = top_p
    request.stop.extend(_stop(body.get("stop")))
    ignore_eos = body.get("ignore_eos", False)
    if not isinstance(ignore_eos, bool):
        raise HttpRequestError("'ignore_eos' must be true or false")
    request.ignore_eos = ignore_eos
    ttft_slo_ms, itl_slo_ms = _number(body, "ttft_slo_ms"), _number(body, "itl_slo_ms")
    if ttft_slo_ms is not None or itl_slo_ms is not None:
        request.slo.CopyFrom(
            common_pb2.SloTarget(ttft_ms=ttft_slo_ms or 0.0, itl_ms=itl_slo_ms or 0.0)
        )


def _check_openai_options(body: Mapping[str, Any]) -> None:
    n = body.get("n", 1)
    if n != 1:
        raise HttpRequestError("only n = 1 is supported")
    if body.get("echo"):
        raise HttpRequestError("'echo' is not supported")
    if body.get("logprobs") not in (None, False, 0):
        raise HttpRequestError("'logprobs' is not supported by the Voltana router")


def _model(body: Mapping[str, Any], served_model: str) -> str:
    model = body.get("model", served_model)
    if not isinstance(model, str) or not model:
        raise HttpRequestError("'model' must be a non-empty string")
    if model != served_model:
        raise HttpRequestError(
            f"the model {model!r} does not exist; this router serves {served_model!r}", 404
        )
    return model


def _stream_flags(body: Mapping[str, Any]) -> tuple[bool, bool]:
    stream = body.get("stream", False)
    if not isinstance(stream, bool):
        raise HttpRequestError("'stream' must be true or false")
    options = body.get("stream_options") or {}
    include_usage = bool(isinstance(options, Mapping) and options.get("include_usage"))
    return stream, include_usage


def parse_completion(body: Any, served_model: str) -> ParsedRequest:
    """An OpenAI /v1/completions body."""
    body = _object(body)
    _check_openai_options(body)
    model = _model(body, served_model)
    request = router_pb2.GenerateRequest()
    prompt = body.get("prompt")
    ids = _token_ids(prompt, "prompt")
    if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str):
        prompt = prompt[0]
    if ids is not None:
        request.input_ids.ids.extend(ids)
    elif isinstance(prompt, str):
        request.text = prompt
    else:
        raise HttpRequestError("'prompt' must be a string or a list of token ids (one prompt)")
    _common(body, request, "max_tokens")
    stream, include_usage = _stream_flags(body)
    return ParsedRequest(ApiKind.COMPLETION, request, stream, include_usage, model)


def _message_text(content: Any) -> str:
    if isinstance(content, str):
        return content
    if isinstance(content, list):
        parts = []
        for part in content:
            if not (isinstance(part, Mapping) and part.get("type") == "text"):
                raise HttpRequestError("only text message parts are supported")
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise HttpRequestError("a message's 'content' must be a string or a list of text parts")


def render_chat(messages: Any) -> str:
    """The messages as one prompt. The router has no tokenizer, so no model chat template:
    a plain ``role: content`` transcript that ends with ``assistant:``."""
    if not isinstance(messages, list) or not messages:
        raise HttpRequestError("'messages' must be a non-empty list")
    lines = []
    for message in messages:
        if not isinstance(message, Mapping) or not isinstance(message.get("role"), str):
            raise HttpRequestError("every message needs a 'role' and a 'content'")
        lines.append(f"{message['role']}: {_message_text(message.get('content'))}")
    return "\n".join([*lines, "assistant:"])


def parse_chat(body: Any, served_model: str) -> ParsedRequest:
    """An OpenAI /v1/chat/completions body."""
    body = _object(body)
    _check_openai_options(body)
    model = _model(body, served_model)
    request = router_pb2.GenerateRequest(text=render_chat(body.get("messages")))
    # max_completion_tokens is the newer name of max_tokens.
    name = (
        "max_completion_tokens" if body.get("max_completion_tokens") is not None else "max_tokens"
    )
    _common(body, request, name)
    stream, include_usage = _stream_flags(body)
    return ParsedRequest(ApiKind.CHAT, request, stream, include_usage, model)


def parse_sglang(body: Any, served_model: str) -> ParsedRequest:
    """SGLang's native /generate body (one prompt)."""
    body = _object(body)
    request = router_pb2.GenerateRequest()
    text, input_ids = body.get("text"), body.get("input_ids")
    if (text is None) == (input_ids is None):
        raise HttpRequestError("give exactly one of 'text' and 'input_ids'")
    if text is not None:
        if not isinstance(text, str):
            raise HttpRequestError("'text' must be a string (one prompt)")
        request.text = text
    else:
        ids = _token_ids(input_ids, "input_ids")
        if ids is None:
            raise HttpRequestError("'input_ids' must be a list of token ids (one prompt)")
        request.input_ids.ids.extend(ids)
    sampling = body.get("sampling_params") or {}
    if not isinstance(sampling, Mapping):
        raise HttpRequestError("'sampling_params' must be an object")
    _common(
        {**sampling, **{k: body[k] for k in ("ttft_slo_ms", "itl_slo_ms") if k in body}},
        request,
        "max_new_tokens",
    )
    rid = body.get("rid")
    if rid is not None:
        if not isinstance(rid, str):
            raise HttpRequestError("'rid' must be a string")
        request.request_id = rid
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
        choice: dict[str, Any] = {"index": 0, "finish_reason": finish_reason, "logprobs": None}
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


def sglang_meta(completion: router_pb2.Completion) -> dict[str, Any]:
    """SGLang's meta_info of a finished request (plus the router's placement and energy)."""
    meta: dict[str, Any] = {
        "id": completion.request_id,
        "finish_reason": {"type": completion.finish_reason or "stop"},
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


def error_body(message: str, status: int) -> dict[str, Any]:
    """OpenAI's error object (SGLang answers errors the same way)."""
    kind = {
        400: "invalid_request_error",
        401: "authentication_error",
        403: "permission_error",
        404: "not_found_error",
        429: "rate_limit_error",
    }.get(status, "server_error" if status >= 500 else "invalid_request_error")
    return {"error": {"message": message, "type": kind, "param": None, "code": status}}
