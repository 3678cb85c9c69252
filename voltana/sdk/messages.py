"""Conversions between the SDK's values and voltana.v1 router messages."""

from __future__ import annotations

from collections.abc import Sequence

from voltana.sdk.errors import InvalidRequestError
from voltana.sdk.types import CandidateInfo, GenerationSummary, PlacementInfo, TokenEvent
from voltana.v1 import common_pb2, router_pb2

_PHASE_NAMES = {
    common_pb2.PHASE_PREFILL: "prefill",
    common_pb2.PHASE_DECODE: "decode",
    common_pb2.PHASE_UNIFIED: "unified",
}


def build_request(
    prompt: str | None,
    *,
    input_ids: Sequence[int] | None,
    max_new_tokens: int | None,
    temperature: float | None,
    top_p: float | None,
    ignore_eos: bool,
    stop: Sequence[str] | None,
    ttft_slo_ms: float | None,
    itl_slo_ms: float | None,
    request_id: str | None,
) -> router_pb2.GenerateRequest:
    """The GenerateRequest for these arguments; the router checks the values themselves."""
    if (prompt is None) == (input_ids is None):
        raise InvalidRequestError("give either a text prompt or input_ids, not both or neither")
    if isinstance(stop, str):
        stop = [stop]
    request = router_pb2.GenerateRequest(
        max_new_tokens=max_new_tokens,
        temperature=temperature,
        top_p=top_p,
        ignore_eos=ignore_eos,
        stop=list(stop or ()),
        request_id=request_id or "",
    )
    if prompt is not None:
        request.text = prompt
    else:
        assert input_ids is not None
        request.input_ids.ids.extend(int(token) for token in input_ids)
    if ttft_slo_ms is not None or itl_slo_ms is not None:
        # 0 leaves that target at the cluster's value.
        request.slo.CopyFrom(
            common_pb2.SloTarget(ttft_ms=ttft_slo_ms or 0.0, itl_ms=itl_slo_ms or 0.0)
        )
    return request


def token_event_from_proto(chunk: router_pb2.TokenChunk) -> TokenEvent:
    return TokenEvent(text=chunk.text, token_ids=tuple(chunk.token_ids), index=chunk.index)


def summary_from_proto(completion: router_pb2.Completion) -> GenerationSummary:
    return GenerationSummary(
        request_id=completion.request_id,
        finish_reason=completion.finish_reason,
        prompt_tokens=completion.prompt_tokens,
        completion_tokens=completion.completion_tokens,
        ttft_ms=completion.ttft_ms,
        mean_itl_ms=completion.mean_itl_ms,
        e2e_latency_ms=completion.e2e_latency_ms,
        prefill_instance=completion.prefill_instance,
        decode_instance=completion.decode_instance,
        bootstrap_room=completion.bootstrap_room,
        energy_j=completion.energy_j if completion.HasField("energy_j") else None,
        idle_energy_j=completion.idle_energy_j if completion.HasField("idle_energy_j") else None,
    )


_Rated = router_pb2.Placement | router_pb2.CandidateScore


def _optional_float(message: _Rated, name: str) -> float | None:
    return float(getattr(message, name)) if message.HasField(name) else None  # type: ignore[arg-type]


def _optional_int(message: _Rated, name: str) -> int | None:
    return int(getattr(message, name)) if message.HasField(name) else None  # type: ignore[arg-type]


def placement_from_proto(message: router_pb2.Placement) -> PlacementInfo:
    return PlacementInfo(
        prefill_id=message.prefill_id,
        decode_id=message.decode_id,
        reason=message.reason,
        policy_name=message.policy_name,
        predicted_ttft_ms=_optional_float(message, "predicted_ttft_ms"),
        predicted_itl_ms=_optional_float(message, "predicted_itl_ms"),
        prefill_clock_mhz=_optional_int(message, "prefill_clock_mhz"),
        decode_clock_mhz=_optional_int(message, "decode_clock_mhz"),
        candidates=tuple(
            CandidateInfo(
                instance_id=candidate.instance_id,
                phase=_PHASE_NAMES.get(candidate.phase, ""),
                score=candidate.score,
                feasible=candidate.feasible,
                required_sm_clock_mhz=_optional_int(candidate, "required_sm_clock_mhz"),
                predicted_latency_ms=_optional_float(candidate, "predicted_latency_ms"),
                reason=candidate.reason,
            )
            for candidate in message.candidates
        ),
    )
