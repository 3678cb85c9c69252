"""The OpenAI-compatible endpoints of an SGLang server (``/v1/completions``,
``/v1/chat/completions``, ``/v1/models``) as the simulated engine serves them. No I/O here.

A request is translated into a native ``/generate`` body and validated by the same parser, so
both APIs accept and refuse the same things. The SGLang router adds ``bootstrap_host``,
``bootstrap_port`` and ``bootstrap_room`` to OpenAI bodies in PD mode; they pass through.
Chat messages become one prompt through a fixed template (the simulated engine has no chat
template of its own); ``max_tokens`` defaults to 16 for completions (OpenAI's default) and to
``DEFAULT_MAX_NEW_TOKENS`` for chat (SGLang would generate until EOS, which never comes here).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from voltana.engine.errors import EngineRequestError
from voltana.engine.logprobs import LogprobEntry, LogprobSource
from voltana.engine.protocol import (
    DEFAULT_MAX_NEW_TOKENS,
    FinishReason,
    GenerateRequest,
    parse_generate_request,
)
from voltana.engine.stopping import visible_text
from voltana.engine.tokenizer import ToyTokenizer

COMPLETIONS_DEFAULT_MAX_TOKENS = 16
# Fields the native parser understands that an OpenAI body may carry as they are.
_PASSTHROUGH = ("rid", "bootstrap_host", "bootstrap_port", "bootstrap_room")
# OpenAI fields that are SGLang sampling parameters of the same name.
_SAMPLING_PASSTHROUGH = ("stop", "stop_token_ids", "ignore_eos")


class OpenAiKind(enum.Enum):
    COMPLETION = "text_completion"
    CHAT = "chat.completion"


@dataclass(frozen=True, slots=True)
class OpenAiRequest:
    kind: OpenAiKind
    generate: GenerateRequest
    model: str
    # Alternatives per token to report; None = no logprobs asked for.
    top_logprobs: int | None
    include_usage: bool
    created_s: int

    @property
    def response_id(self) -> str:
        prefix = "chatcmpl" if self.kind is OpenAiKind.CHAT else "cmpl"
        return f"{prefix}-{self.generate.rid}"


def openai_error(message: str, status: int) -> dict[str, Any]:
    """SGLang's OpenAI-style error body."""
    names = {400: "BadRequestError", 404: "NotFoundError", 503: "ServiceUnavailableError"}
    return {
        "object": "error",
        "message": message,
        "type": names.get(status, "InternalServerError"),
        "param": None,
        "code": status,
    }


def chat_prompt(messages: object) -> str:
    """The prompt text of a chat: one block per message, then the assistant's turn."""
    if not isinstance(messages, list) or not messages:
        raise EngineRequestError("'messages' must be a non-empty list")
    blocks = []
    for index, message in enumerate(messages):
        if not isinstance(message, dict) or not isinstance(message.get("role"), str):
            raise EngineRequestError(f"messages[{index}] must be an object with a 'role'")
        blocks.append(f"<|{message['role']}|>\n{_content_text(message.get('content'), index)}\n")
    return "".join(blocks) + "<|assistant|>\n"


def _content_text(content: object, index: int) -> str:
    if content is None or isinstance(content, str):
        return content or ""
    if isinstance(content, list):
        parts = []
        for part in content:
            if not isinstance(part, dict) or part.get("type") != "text":
                raise EngineRequestError(
                    f"messages[{index}]: only text content parts are supported by this engine"
                )
            parts.append(str(part.get("text", "")))
        return "".join(parts)
    raise EngineRequestError(f"messages[{index}].content must be a string or a list of parts")


def _max_tokens(body: Mapping[str, Any], default: int) -> object:
    for name in ("max_completion_tokens", "max_tokens"):
        if body.get(name) is not None:
            return body[name]
    return default


def _top_logprobs(kind: OpenAiKind, body: Mapping[str, Any]) -> int | None:
    if kind is OpenAiKind.CHAT:
        wanted = body.get("logprobs", False)
        if not isinstance(wanted, bool):
            raise EngineRequestError("'logprobs' must be a boolean in chat completions")
        top = body.get("top_logprobs", 0) or 0
        if not isinstance(top, int) or isinstance(top, bool) or not 0 <= top <= 20:
            raise EngineRequestError(f"'top_logprobs' must be an integer in 0..20, got {top!r}")
        if top and not wanted:
            raise EngineRequestError("'top_logprobs' needs 'logprobs': true")
        return top if wanted else None
    count = body.get("logprobs")
    if count is None:
        return None
    if not isinstance(count, int) or isinstance(count, bool) or not 0 <= count <= 5:
        raise EngineRequestError(f"'logprobs' must be an integer in 0..5, got {count!r}")
    return count


def parse_openai_request(
    kind: OpenAiKind, body: object, tokenizer: ToyTokenizer, served_model: str
) -> OpenAiRequest:
    """Validate an OpenAI body; raises ``EngineRequestError`` (HTTP 400) when invalid."""
    if not isinstance(body, dict):
        raise EngineRequestError("the request body must be a JSON object")
    n = body.get("n", 1)
    if n != 1:
        raise EngineRequestError(f"only n=1 is supported, got {n!r}")
    native: dict[str, Any] = {key: body[key] for key in _PASSTHROUGH if key in body}
    if kind is OpenAiKind.CHAT:
        native["text"] = chat_prompt(body.get("messages"))
        default_max = DEFAULT_MAX_NEW_TOKENS
    else:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and len(prompt) == 1 and isinstance(prompt[0], str | list):
            prompt = prompt[0]  # one prompt given as a batch of one
        if isinstance(prompt, str):
            native["text"] = prompt
        elif isinstance(prompt, list):
            native["input_ids"] = prompt
        else:
            raise EngineRequestError("'prompt' must be a string or a list of token ids")
        default_max = COMPLETIONS_DEFAULT_MAX_TOKENS
    native["sampling_params"] = {
        "max_new_tokens": _max_tokens(body, default_max),
        **{key: body[key] for key in _SAMPLING_PASSTHROUGH if body.get(key) is not None},
    }
    stream = body.get("stream", False)
    native["stream"] = stream
    top = _top_logprobs(kind, body)
    if top is not None:
        native.update(return_logprob=True, top_logprobs_num=top, return_text_in_logprobs=True)
    options = body.get("stream_options") or {}
    if not isinstance(options, dict):
        raise EngineRequestError("'stream_options' must be an object")
    model = body.get("model")
    return OpenAiRequest(
        kind=kind,
        generate=parse_generate_request(native, tokenizer),
        model=model if isinstance(model, str) and model else served_model,
        top_logprobs=top,
        include_usage=bool(options.get("include_usage", False)),
        created_s=int(time.time()),
    )


def model_card(served_model: str, context_length: int) -> dict[str, Any]:
    """``GET /v1/models/{id}`` of the served model."""
    return {
        "id": served_model,
        "object": "model",
        "created": int(time.time()),
        "owned_by": "sglang",
        "root": served_model,
        "max_model_len": context_length,
    }


def model_list(served_model: str, context_length: int) -> dict[str, Any]:
    """``GET /v1/models``."""
    return {"object": "list", "data": [model_card(served_model, context_length)]}


def finish_reason_name(finish_reason: FinishReason | None) -> str | None:
    if finish_reason is None:
        return None
    return str(finish_reason.get("type", "stop"))


class OpenAiFormatter:
    """Response bodies and stream chunks of one OpenAI request."""

    def __init__(self, request: OpenAiRequest, tokenizer: ToyTokenizer, seed: int) -> None:
        self.request = request
        self._tokenizer = tokenizer
        options = request.generate.logprobs
        self._logprobs = LogprobSource(tokenizer, seed, options) if options else None

    def _envelope(self, chunk: bool) -> dict[str, Any]:
        kind = self.request.kind
        if chunk:
            obj = "chat.completion.chunk" if kind is OpenAiKind.CHAT else "text_completion"
        else:
            obj = kind.value
        return {
            "id": self.request.response_id,
            "object": obj,
            "created": self.request.created_s,
            "model": self.request.model,
        }

    def usage(self, completion_tokens: int) -> dict[str, int]:
        prompt_tokens = self.request.generate.prompt_tokens
        return {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }

    def _logprob_block(self, ids: Sequence[int], first_position: int) -> dict[str, Any] | None:
        if self._logprobs is None or self.request.top_logprobs is None:
            return None
        source, top = self._logprobs, self.request.top_logprobs
        positions = list(enumerate(ids, start=first_position))
        chosen = [source.output_entry(p, t) for p, t in positions]
        alternatives = [source.output_top(p, t) for p, t in positions] if top else []
        if self.request.kind is OpenAiKind.CHAT:
            content = []
            for index, entry in enumerate(chosen):
                item = _chat_logprob(entry)
                item["top_logprobs"] = (
                    [_chat_logprob(e) for e in alternatives[index]] if top else []
                )
                content.append(item)
            return {"content": content}
        texts = [self._tokenizer.decode_token(token_id) for _, token_id in positions]
        offsets, offset = [], 0
        for text in texts:
            offsets.append(offset)
            offset += len(text)
        return {
            "tokens": texts,
            "token_logprobs": [entry[0] for entry in chosen],
            "top_logprobs": (
                [{e[2] or "": e[0] for e in alternatives[i]} for i in range(len(chosen))]
                if top
                else None
            ),
            "text_offset": offsets,
        }

    def _choice(
        self, text: str, ids: Sequence[int], first_position: int, finish: str | None, chunk: bool
    ) -> dict[str, Any]:
        choice: dict[str, Any] = {"index": 0}
        if self.request.kind is OpenAiKind.CHAT:
            key = "delta" if chunk else "message"
            choice[key] = {"role": "assistant", "content": text} if not chunk else {"content": text}
        else:
            choice["text"] = text
        choice["logprobs"] = self._logprob_block(ids, first_position)
        choice["finish_reason"] = finish
        return choice

    def response(self, output_ids: Sequence[int], finish_reason: FinishReason) -> dict[str, Any]:
        """The whole answer of a non-streaming request."""
        body = self._envelope(chunk=False)
        text = visible_text(self._tokenizer, output_ids, finish_reason)
        finish = finish_reason_name(finish_reason)
        body["choices"] = [self._choice(text, output_ids, 0, finish, chunk=False)]
        body["usage"] = self.usage(len(output_ids))
        return body

    def first_chunks(self) -> list[dict[str, Any]]:
        """What a stream starts with before any token (the assistant's role, for chat)."""
        if self.request.kind is not OpenAiKind.CHAT:
            return []
        body = self._envelope(chunk=True)
        delta = {"role": "assistant", "content": ""}
        body["choices"] = [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": None}]
        return [body]

    def chunks(
        self,
        output_ids: Sequence[int],
        first_position: int,
        finish_reason: FinishReason | None,
    ) -> list[dict[str, Any]]:
        """Stream chunks for the output from ``first_position`` on."""
        new_ids = output_ids[first_position:]
        completion_tokens = len(output_ids)
        body = self._envelope(chunk=True)
        text = visible_text(self._tokenizer, output_ids, finish_reason, first_position)
        finish = finish_reason_name(finish_reason)
        body["choices"] = [self._choice(text, new_ids, first_position, finish, chunk=True)]
        chunks = [body]
        if finish is not None and self.request.include_usage:
            usage_chunk = self._envelope(chunk=True)
            usage_chunk["choices"] = []
            usage_chunk["usage"] = self.usage(completion_tokens)
            chunks.append(usage_chunk)
        return chunks


def _chat_logprob(entry: LogprobEntry) -> dict[str, Any]:
    logprob, _, text = entry
    token = text or ""
    return {"token": token, "logprob": logprob, "bytes": list(token.encode())}
