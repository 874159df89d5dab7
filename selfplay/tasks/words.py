"""Number words: a transduction task with one exact answer, the "human" data written by a
converter that ships in a PyPI package (num2words), never a download.

  prompt     "347:"                           the number, then ':'
  target     "three hundred and forty-seven"  num2words' English (British 'and')
  reference  the same text
  id         "words:347"

The scorer compares the reply with the reference after collapsing runs of whitespace and
stripping the ends: any other difference (a missing 'and', a hyphen) is wrong. A reply
made only of lowercase letters, spaces, hyphens and commas is well formed (`format`).
Numbers are drawn uniformly from min_value..max_value."""

from __future__ import annotations

import functools
import random
import re
from dataclasses import dataclass
from typing import ClassVar

from num2words import num2words

from selfplay.tasks.base import Problem, Score, draw_held_out, draw_train

WORDS = re.compile(r"[a-z ,\-]+")


def canonical(text: str) -> str:
    return " ".join(text.split())


@functools.cache
def longest_words(low: int, high: int) -> int:
    """The length of the longest English number name in low..high (every one is written once)."""
    return max(len(num2words(n)) for n in range(low, high + 1))


@dataclass(frozen=True)
class NumberWords:
    min_value: int = 0
    max_value: int = 999
    held_out_percent: int = 10  # share of problem ids (by hash) in the held-out split

    name: ClassVar[str] = "words"

    def __post_init__(self):
        if not 0 <= self.min_value <= self.max_value:
            raise ValueError(
                f"task.params.max_value: must be >= min_value >= 0 (got {self.min_value}..{self.max_value})"
            )
        if self.max_value - self.min_value > 100_000:
            raise ValueError(
                f"task.params.max_value: at most 100001 numbers in range (got {self.min_value}..{self.max_value})"
            )
        if not 0 <= self.held_out_percent < 100:
            raise ValueError(
                f"task.params.held_out_percent: must be in [0, 100) (got {self.held_out_percent})"
            )

    @property
    def max_reply_chars(self) -> int:
        """The longest target in range, plus 2 characters of slack."""
        return longest_words(self.min_value, self.max_value) + 2

    def problem(self, seed: int) -> Problem:
        return draw_train(self.name, seed, self.held_out_percent, self._draw)

    def held_out(self, n: int) -> list[Problem]:
        size = self.max_value - self.min_value + 1
        return draw_held_out(self.name, n, self.held_out_percent, self._draw, self._space, size)

    def _space(self):
        return (f"{self.name}:{n}" for n in range(self.min_value, self.max_value + 1))

    def _draw(self, rng: random.Random) -> Problem:
        n = rng.randint(self.min_value, self.max_value)
        text = num2words(n)
        return Problem(task=self.name, id=f"{self.name}:{n}", prompt=f"{n}:", reference=text, target=text)

    def score(self, prompt: str, response: str, reference: str) -> Score:
        """total = correct: 1 when the reply is the reference (whitespace collapsed), else 0."""
        reply = canonical(response) if isinstance(response, str) else ""
        if not WORDS.fullmatch(reply):
            return Score(total=0.0, parts={"correct": 0.0, "format": 0.0}, valid=False, reason="format")
        correct = float(reply == canonical(reference))
        return Score(total=correct, parts={"correct": correct, "format": 1.0})
