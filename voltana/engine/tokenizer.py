"""A simulated tokenizer: deterministic token ids for text and pseudo-words for output ids.

It is NOT a real vocabulary. It only has to give plausible token counts (about 4 characters per
token, as English BPE does) and reproducible outputs, so that prefill and decode instances that
receive the same request agree on every token without talking to each other.
"""

from __future__ import annotations

import array
import math
import zlib
from collections.abc import Sequence

CHARS_PER_TOKEN = 4
# Ids below this stand for special tokens; text and outputs never use them.
FIRST_ORDINARY_ID = 1000
_SYLLABLES = (
    "ka", "lo", "mi", "ten", "ru", "sa", "ne", "po",
    "vi", "da", "gor", "ze", "ha", "bu", "fi", "jo",
)  # fmt: skip
_MASK_64 = (1 << 64) - 1


def mix64(value: int) -> int:
    """SplitMix64 finaliser: spreads consecutive integers over 64 bits."""
    value = (value + 0x9E3779B97F4A7C15) & _MASK_64
    value = ((value ^ (value >> 30)) * 0xBF58476D1CE4E5B9) & _MASK_64
    value = ((value ^ (value >> 27)) * 0x94D049BB133111EB) & _MASK_64
    return value ^ (value >> 31)


def count_text_tokens(text: str, chars_per_token: float = CHARS_PER_TOKEN) -> int:
    """How many tokens ``ToyTokenizer.encode`` makes of ``text``: each whitespace-separated word
    in pieces of ``chars_per_token`` characters.

    The router estimates text prompts with this same rule (it has no tokenizer), so router and
    simulated engines agree on every prompt; counting characters instead (spaces and newlines
    too) would not: a chat transcript ``user: Hello\nassistant:`` is 6 by characters, 7 here.
    """
    return sum(math.ceil(len(word) / chars_per_token) for word in text.split())


class ToyTokenizer:
    """Whitespace-separated words, each cut into pieces of ``CHARS_PER_TOKEN`` characters."""

    def __init__(self, vocab_size: int) -> None:
        if vocab_size <= FIRST_ORDINARY_ID:
            raise ValueError(f"vocab_size must exceed {FIRST_ORDINARY_ID}, got {vocab_size}")
        self.vocab_size = vocab_size
        self._ordinary_ids = vocab_size - FIRST_ORDINARY_ID

    def encode(self, text: str) -> list[int]:
        ids: list[int] = []
        for word in text.split():
            for start in range(0, len(word), CHARS_PER_TOKEN):
                piece = word[start : start + CHARS_PER_TOKEN].encode()
                ids.append(FIRST_ORDINARY_ID + zlib.crc32(piece) % self._ordinary_ids)
        return ids

    def decode_token(self, token_id: int) -> str:
        """A pseudo-word with a leading space; the same id always gives the same word."""
        count = len(_SYLLABLES)
        parts = [_SYLLABLES[token_id % count], _SYLLABLES[(token_id // count) % count]]
        if token_id % 3 == 0:
            parts.append(_SYLLABLES[(token_id // count**2) % count])
        return " " + "".join(parts)

    def decode(self, token_ids: Sequence[int]) -> str:
        return "".join(self.decode_token(token_id) for token_id in token_ids)

    @staticmethod
    def prompt_seed(input_ids: Sequence[int]) -> int:
        """A seed that only depends on the prompt, so every instance derives the same outputs."""
        return zlib.crc32(array.array("q", input_ids).tobytes())

    def output_token_id(self, seed: int, position: int) -> int:
        """The ``position``-th (0-based) output token of a prompt with ``seed``."""
        return FIRST_ORDINARY_ID + mix64(seed * 1_000_003 + position) % self._ordinary_ids
