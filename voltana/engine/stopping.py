"""Stop conditions of the simulated engine, as SGLang checks them (no I/O).

SGLang ends a request when its last token is one of ``stop_token_ids`` (skipped with
``ignore_eos``) or when the decoded tail of the output contains a ``stop`` string; the finish
reason is then ``{"type": "stop", "matched": <the token id or the string>}``. The matched token
stays in ``output_ids`` and counts as a completion token; the text is cut before the stop
string (before the stop token), as SGLang's detokenizer does by default.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

from voltana.engine.tokenizer import ToyTokenizer

FinishReason = dict[str, Any]


@dataclass(frozen=True, slots=True)
class StopCriteria:
    strings: tuple[str, ...] = ()
    token_ids: frozenset[int] = frozenset()

    def __bool__(self) -> bool:
        return bool(self.strings or self.token_ids)


def stop_finish(matched: str | int) -> FinishReason:
    return {"type": "stop", "matched": matched}


def _tail_text(tokenizer: ToyTokenizer, output_ids: Sequence[int], chars: int) -> str:
    """The decoded text of the last tokens, at least ``chars`` characters (or all of it)."""
    pieces: list[str] = []
    length = 0
    for token_id in reversed(output_ids):
        pieces.append(tokenizer.decode_token(token_id))
        length += len(pieces[-1])
        if length >= chars:
            break
    return "".join(reversed(pieces))


def check_stop(
    criteria: StopCriteria, output_ids: Sequence[int], tokenizer: ToyTokenizer
) -> FinishReason | None:
    """The stop finish reason once ``output_ids`` (just grown by one token) ends the request.

    Only the tail that the newest token can complete is decoded: a match that ended earlier
    would have stopped the request then.
    """
    if not criteria or not output_ids:
        return None
    last_id = output_ids[-1]
    if last_id in criteria.token_ids:
        return stop_finish(last_id)
    if criteria.strings:
        newest_chars = len(tokenizer.decode_token(last_id))
        longest = max(len(text) for text in criteria.strings)
        tail = _tail_text(tokenizer, output_ids, longest + newest_chars)
        for text in criteria.strings:
            if text in tail:
                return stop_finish(text)
    return None


def visible_text(
    tokenizer: ToyTokenizer,
    output_ids: Sequence[int],
    finish_reason: FinishReason | None,
    start: int = 0,
) -> str:
    """The text of ``output_ids[start:]`` as the client sees it: cut before the stop string
    or token that ended the request (text already sent before ``start`` is never taken back)."""
    matched = finish_reason.get("matched") if finish_reason is not None else None
    if finish_reason is None or finish_reason.get("type") != "stop" or matched is None:
        return tokenizer.decode(output_ids[start:])
    if isinstance(matched, str):
        whole = tokenizer.decode(output_ids)
        cut = whole.find(matched)
        shown = tokenizer.decode(output_ids[:start])
        return whole[len(shown) : max(cut, len(shown))] if cut >= 0 else whole[len(shown) :]
    return tokenizer.decode(output_ids[start:-1])
