"""Made-up but well-formed logprobs for the simulated engine (SGLang's ``return_logprob``).

No model runs, so the numbers are invented. They are deterministic per prompt and position (the
prefill and decode instances of one request agree without talking), every logprob is < 0, and the
probabilities listed for one position never add up to more than 1. Entries follow SGLang's
``meta_info`` layout: ``(logprob, token_id, text or None)``; the first prompt token has no logprob.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import Any

from voltana.engine.protocol import LogprobOptions
from voltana.engine.tokenizer import ToyTokenizer, mix64

LogprobEntry = tuple[float | None, int, str | None]

_UNIT = float(1 << 64)
_OUTPUT_SALT = 0x5851F42D4C957F2D
_PROMPT_SALT = 0x2545F4914F6CDD1D


def _unit(seed: int, position: int, salt: int) -> float:
    """A number in [0, 1) that only depends on its arguments."""
    return mix64((seed * 1_000_003 + position) ^ salt) / _UNIT


def _probability(seed: int, position: int, salt: int, low: float, high: float) -> float:
    return low + (high - low) * _unit(seed, position, salt)


class LogprobSource:
    """Logprobs of the prompt and the output of one request (``seed`` = the prompt's seed)."""

    def __init__(self, tokenizer: ToyTokenizer, seed: int, options: LogprobOptions) -> None:
        self._tokenizer = tokenizer
        self._seed = seed
        self._options = options

    def _text(self, token_id: int) -> str | None:
        return self._tokenizer.decode_token(token_id) if self._options.with_text else None

    def output_probability(self, position: int) -> float:
        # Generated tokens are mostly confident picks.
        return _probability(self._seed, position, _OUTPUT_SALT, 0.05, 0.99)

    def output_entry(self, position: int, token_id: int) -> LogprobEntry:
        return (math.log(self.output_probability(position)), token_id, self._text(token_id))

    def output_top(self, position: int, token_id: int) -> list[LogprobEntry]:
        """The ``top_num`` likeliest tokens at ``position``, the generated one among them."""
        chosen = self.output_probability(position)
        return self._top(position, token_id, chosen, _OUTPUT_SALT)

    def prompt_entry(self, position: int, token_id: int) -> LogprobEntry:
        if position == 0:
            return (None, token_id, self._text(token_id))
        probability = _probability(self._seed, position, _PROMPT_SALT, 0.001, 0.6)
        return (math.log(probability), token_id, self._text(token_id))

    def _top(self, position: int, token_id: int, chosen: float, salt: int) -> list[LogprobEntry]:
        count = self._options.top_num
        if count <= 0:
            return []
        # The rest of the probability mass, shared by alternatives in halving shares.
        entries: list[tuple[float, int]] = [(chosen, token_id)]
        rest = 1.0 - chosen
        for rank in range(1, count):
            share = rest * 0.5**rank * (0.5 + 0.5 * _unit(self._seed, position * 64 + rank, salt))
            alternative = self._tokenizer.output_token_id(self._seed ^ salt, position * 64 + rank)
            if alternative != token_id:
                entries.append((share, alternative))
        entries.sort(key=lambda entry: entry[0], reverse=True)
        return [(math.log(p), tid, self._text(tid)) for p, tid in entries[:count]]

    def prompt_top(self, position: int, token_id: int) -> list[LogprobEntry] | None:
        if position == 0 or self._options.top_num <= 0:
            return None
        logprob = self.prompt_entry(position, token_id)[0]
        assert logprob is not None
        return self._top(position, token_id, math.exp(logprob), _PROMPT_SALT)

    def meta(
        self,
        prompt_ids: Sequence[int] | None,
        output_ids: Sequence[int],
        first_output_position: int = 0,
    ) -> dict[str, Any]:
        """SGLang's logprob keys of ``meta_info``.

        ``prompt_ids`` None leaves the prompt out (a decode instance never computed it; SGLang's
        router takes those from the prefill). ``output_ids`` start at output position
        ``first_output_position`` (streams that send only what is new).
        """
        options = self._options
        prompt_positions: list[tuple[int, int]] = []
        if prompt_ids is not None and options.start_len >= 0:
            prompt_positions = list(enumerate(prompt_ids))[options.start_len :]
        positions = list(enumerate(output_ids, start=first_output_position))
        meta: dict[str, Any] = {
            "input_token_logprobs": [self.prompt_entry(i, t) for i, t in prompt_positions],
            "output_token_logprobs": [self.output_entry(i, t) for i, t in positions],
        }
        if options.top_num > 0:
            meta["input_top_logprobs"] = [self.prompt_top(i, t) for i, t in prompt_positions]
            meta["output_top_logprobs"] = [self.output_top(i, t) for i, t in positions]
        return meta
