"""Sending a placed request to its prefill+decode pair (or its colocated instance) and reading
the stream.

SGLang PD semantics: the same ``/generate`` body goes to both instances with the prefill's
bootstrap host/port and one random 63-bit room (``SglangHttpClient.generate_pd``). A request
placed on a colocated instance (SGLang without disaggregation) is one plain ``/generate`` to it,
with no bootstrap fields. Engine
chunks are turned into token deltas, whether the engine streams cumulative text/ids (SGLang's
default) or increments (``--incremental-streaming-output``, cheaper: a cumulative stream
resends the whole output in every chunk); the chunks one network read brought go on as one
delta, so a client behind a fast engine gets one message per read, not per token. A stream the
engine ends with finish reason
"abort" is an error (EngineAbortedError), not a short answer.
"""

from __future__ import annotations

import asyncio
import math
import secrets
import time
from collections.abc import AsyncGenerator, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from opentelemetry import context as otel_context

from voltana.contract.instances import InstanceInfo
from voltana.energy import RequestEnergy
from voltana.engine import (
    EngineError,
    EngineRequestError,
    EngineTimeoutError,
    EngineUnavailableError,
    SglangHttpClient,
)
from voltana.services.router.errors import (
    EngineAbortedError,
    EngineDeadlineError,
    EngineFailedError,
    EngineRejectedError,
    EngineUnreachableError,
    RouterError,
)
from voltana.services.router.validation import ValidatedRequest

# SGLang's --disaggregation-bootstrap-port default, for prefill instances registered without one.
DEFAULT_BOOTSTRAP_PORT = 8998
MAX_BOOTSTRAP_ROOM_BITS = 63


@dataclass(frozen=True, slots=True)
class PdTarget:
    """Where one PD request goes."""

    prefill_url: str
    decode_url: str
    bootstrap_host: str
    bootstrap_port: int
    bootstrap_room: int
    prefill_id: str = ""
    decode_id: str = ""
    # One colocated instance prefills and decodes: one plain /generate to it (prefill_url ==
    # decode_url, no bootstrap endpoint, room 0).
    colocated: bool = False

    @classmethod
    def colocated_on(cls, instance: InstanceInfo) -> PdTarget:
        """A request for one colocated instance."""
        return cls(
            prefill_url=instance.engine_url,
            decode_url=instance.engine_url,
            bootstrap_host="",
            bootstrap_port=0,
            bootstrap_room=0,
            prefill_id=instance.instance_id,
            decode_id=instance.instance_id,
            colocated=True,
        )

    @classmethod
    def for_instances(cls, prefill: InstanceInfo, decode: InstanceInfo) -> PdTarget:
        """The prefill's bootstrap endpoint (its engine host and SGLang's default port when it
        registered none) and a fresh random room."""
        host = prefill.bootstrap_host or urlsplit(prefill.engine_url).hostname or ""
        return cls(
            prefill_url=prefill.engine_url,
            decode_url=decode.engine_url,
            bootstrap_host=host,
            bootstrap_port=prefill.bootstrap_port or DEFAULT_BOOTSTRAP_PORT,
            bootstrap_room=secrets.randbits(MAX_BOOTSTRAP_ROOM_BITS),
            prefill_id=prefill.instance_id,
            decode_id=decode.instance_id,
        )

    def instance_for_url(self, url: str) -> str | None:
        """Which of the two instances an engine call to ``url`` went to (None: neither)."""
        for base, instance_id in (
            (self.prefill_url, self.prefill_id),
            (self.decode_url, self.decode_id),
        ):
            if base and url.startswith(base.rstrip("/")):
                return instance_id
        return None


@dataclass(frozen=True, slots=True)
class TokenDelta:
    """Tokens new in one engine chunk. ``at_s`` is when the chunk arrived (monotonic)."""

    text: str
    token_ids: tuple[int, ...]
    index: int
    count: int
    at_s: float


@dataclass
class StreamTotals:
    """What the stream said about the whole request, filled in as chunks arrive."""

    prompt_tokens: int | None = None
    completion_tokens: int = 0
    finish_reason: str = ""
    abort_message: str = ""
    # What ended a "stop" finish: the stop string or token id (None: not said).
    matched_stop: str | int | None = None
    # GPU energy the engines attributed to the request (simulated engines report it in their
    # last chunk's meta_info; real SGLang does not: None).
    prefill_energy: RequestEnergy | None = None
    decode_energy: RequestEnergy | None = None
    # The router's own estimate (energy_estimates.py), for engines that report none.
    estimated_energy: RequestEnergy | None = None
    # One colocated engine served the request: its report (decode_energy) is the whole.
    colocated: bool = False

    @property
    def energy(self) -> RequestEnergy | None:
        """Prefill plus decode energy when both engines reported theirs (the colocated
        engine's alone), else the router's estimate (None when there is neither)."""
        if self.colocated:
            return self.decode_energy if self.decode_energy is not None else self.estimated_energy
        if self.prefill_energy is None or self.decode_energy is None:
            return self.estimated_energy
        return self.prefill_energy + self.decode_energy


def energy_from_meta(meta: Mapping[str, Any]) -> RequestEnergy | None:
    """``meta_info["voltana_energy"]`` of a simulated engine's last chunk, when well-formed."""
    energy = meta.get("voltana_energy")
    if not isinstance(energy, Mapping):
        return None
    active_j, idle_j = energy.get("active_j"), energy.get("idle_j")
    if not isinstance(active_j, int | float) or not isinstance(idle_j, int | float):
        return None
    if not (math.isfinite(active_j) and math.isfinite(idle_j)) or min(active_j, idle_j) < 0:
        return None
    return RequestEnergy(float(active_j), float(idle_j))


def sglang_payload(request: ValidatedRequest) -> dict[str, Any]:
    """The ``/generate`` body (without the PD and stream fields generate_pd adds)."""
    sampling: dict[str, Any] = {
        "max_new_tokens": request.max_new_tokens,
        "ignore_eos": request.ignore_eos,
    }
    if request.temperature is not None:
        sampling["temperature"] = request.temperature
    if request.top_p is not None:
        sampling["top_p"] = request.top_p
    if request.stop:
        sampling["stop"] = list(request.stop)
    if request.stop_token_ids:
        sampling["stop_token_ids"] = list(request.stop_token_ids)
    # SGLang's names: sampling_seed, and the OpenAI penalties as they are.
    optional = {
        "sampling_seed": request.seed,
        "presence_penalty": request.presence_penalty,
        "frequency_penalty": request.frequency_penalty,
    }
    sampling.update({name: value for name, value in optional.items() if value is not None})
    payload: dict[str, Any] = {"sampling_params": sampling, "rid": request.request_id}
    if request.text is not None:
        payload["text"] = request.text
    else:
        assert request.input_ids is not None
        payload["input_ids"] = list(request.input_ids)
    return payload


def _finish_reason(value: Any) -> tuple[str, str, str | int | None]:
    """SGLang's finish_reason ({"type": "length", ...} or a plain string) as (type, message,
    matched stop string or token id)."""
    if isinstance(value, Mapping):
        matched = value.get("matched")
        if isinstance(matched, bool) or not isinstance(matched, str | int):
            matched = None
        return str(value.get("type", "")), str(value.get("message", "")), matched
    if isinstance(value, str):
        return value, "", None
    return "", "", None


class ChunkReader:
    """Turns successive SGLang stream chunks into token deltas.

    Whether the engine streams cumulative or incremental output is told apart on the first
    chunk that follows some tokens: cumulative ``output_ids`` hold every token so far. Only the
    length of the text so far is kept once that is decided (the first chunk's text until then).
    """

    def __init__(self, clock: Callable[[], float] = time.monotonic) -> None:
        self._clock = clock
        self._first_text = ""
        self._text_chars = 0
        self._count = 0
        self._cumulative: bool | None = None
        self.totals = StreamTotals()

    def read_prefill(self, chunk: Mapping[str, Any] | None) -> None:
        """The prefill engine's last chunk: only its energy matters here."""
        meta = chunk.get("meta_info") if chunk is not None else None
        if isinstance(meta, Mapping):
            self.totals.prefill_energy = energy_from_meta(meta)

    def read_all(self, chunks: Sequence[Mapping[str, Any]]) -> TokenDelta | None:
        """The new tokens of successive chunks as one delta (None when they bring none)."""
        deltas = [d for d in map(self.read, chunks) if d is not None]
        if len(deltas) <= 1:
            return deltas[0] if deltas else None
        first = deltas[0]
        return TokenDelta(
            "".join(d.text for d in deltas),
            tuple(i for d in deltas for i in d.token_ids),
            first.index,
            sum(d.count for d in deltas),
            first.at_s,
        )

    def read(self, chunk: Mapping[str, Any]) -> TokenDelta | None:
        """The new tokens of ``chunk`` (None when it brings none)."""
        at_s = self._clock()
        meta = chunk.get("meta_info")
        meta = meta if isinstance(meta, Mapping) else {}
        text = chunk.get("text")
        text = text if isinstance(text, str) else ""
        raw_ids = chunk.get("output_ids")
        ids = [int(i) for i in raw_ids] if isinstance(raw_ids, list) else None
        reported_total = meta.get("completion_tokens")
        if isinstance(meta.get("prompt_tokens"), int):
            self.totals.prompt_tokens = meta["prompt_tokens"]
        if meta.get("finish_reason") is not None:
            reason, message, matched = _finish_reason(meta["finish_reason"])
            self.totals.finish_reason, self.totals.abort_message = reason, message
            self.totals.matched_stop = matched
            self.totals.decode_energy = energy_from_meta(meta)
        if self._cumulative is None and self._count > 0:
            if ids is not None and isinstance(reported_total, int):
                self._cumulative = len(ids) == reported_total
            elif text:
                self._cumulative = text.startswith(self._first_text)
            self._first_text = ""
        if self._cumulative:
            new_text = text[self._text_chars :]
            new_ids = tuple(ids[self._count :]) if ids is not None else ()
        else:
            new_text = text
            new_ids = tuple(ids) if ids is not None else ()
        if isinstance(reported_total, int):
            new_count = max(0, reported_total - self._count)
        else:
            new_count = len(new_ids) if ids is not None else int(bool(new_text))
        self.totals.completion_tokens = self._count + new_count
        if new_count == 0 and not new_text:
            return None
        delta = TokenDelta(new_text, new_ids, self._count, new_count, at_s)
        if self._cumulative is None:
            self._first_text += new_text
        self._text_chars += len(new_text)
        self._count += new_count
        return delta


def router_error_for(error: EngineError) -> RouterError:
    """The router error (and so gRPC status) an engine failure stands for."""
    routed: RouterError
    if isinstance(error, EngineRequestError):
        routed = EngineRejectedError(f"the engine refused the request: {error}")
    elif isinstance(error, EngineUnavailableError):
        routed = EngineUnreachableError(f"engine unavailable: {error}")
    elif isinstance(error, EngineTimeoutError):
        routed = EngineDeadlineError(f"engine timed out: {error}")
    else:
        routed = EngineFailedError(f"engine failed: {error}")
    routed.engine_url = error.url
    return routed


async def stream_tokens(
    engine: SglangHttpClient,
    target: PdTarget,
    request: ValidatedRequest,
    reader: ChunkReader,
    *,
    deadline_s: float,
    trace_context: otel_context.Context | None = None,
) -> AsyncGenerator[TokenDelta, None]:
    """Token deltas of ``request`` on ``target``; engine errors become router errors.

    ``deadline_s`` is on the event loop's clock. Closing the iterator (or cancelling its
    consumer) closes both engine requests, which makes the engines abort them.
    ``trace_context`` is current while the engine calls run (never across a yield), so their
    HTTP client spans, and the ``traceparent`` they send, continue the request's trace.
    """
    batches: AsyncGenerator[list[dict[str, Any]], None]
    if target.colocated:
        reader.totals.colocated = True
        batches = engine.generate_stream_batches(target.decode_url, sglang_payload(request))
    else:
        batches = engine.generate_pd_batches(
            target.prefill_url,
            target.decode_url,
            target.bootstrap_host,
            target.bootstrap_port,
            sglang_payload(request),
            bootstrap_room=target.bootstrap_room,
            on_prefill_done=reader.read_prefill,
        )
    try:
        while True:
            try:
                # The deadline wraps each read, never a yield (a timeout must not fire while
                # the consumer holds the generator).
                async with asyncio.timeout_at(deadline_s):
                    token = otel_context.attach(trace_context) if trace_context else None
                    try:
                        batch = await anext(batches)
                    finally:
                        if token is not None:
                            otel_context.detach(token)
            except StopAsyncIteration:
                return
            except TimeoutError:
                raise EngineDeadlineError(
                    f"the engines did not finish request {request.request_id} in time "
                    f"({reader.totals.completion_tokens} of {request.max_new_tokens} tokens "
                    "received)"
                ) from None
            except EngineError as error:
                raise router_error_for(error) from error
            # What one read brought goes on as one delta (one message to the client).
            delta = reader.read_all(batch)
            if delta is not None:
                yield delta
            if reader.totals.finish_reason == "abort":
                aborted = EngineAbortedError(
                    f"the engine aborted request {request.request_id} after "
                    f"{reader.totals.completion_tokens} of {request.max_new_tokens} tokens: "
                    f"{reader.totals.abort_message or 'no reason given'}"
                )
                aborted.engine_url = target.decode_url
                raise aborted
    finally:
        await batches.aclose()
