"""Arithmetic: procedurally generated chain sums, small enough for a char-level model.

  prompt     "12+345-7="                   operands and operators, no spaces, then '='
  target     "350"                         the integer (may be negative)
             "12+345=357;357-7=350;350"    with scratchpad=True: one step per operator, each the
                                           running sum so far, the operator, the next operand
                                           and the new running sum, then the final answer alone
  reference  "350"
  id         "arithmetic:12+345-7"

The scorer reads only the final answer: the text after the last ';' (the whole reply when
there is none), so wrong scratchpad steps cost nothing and a bare answer scores with or
without a scratchpad. It compares normalised integer text (ends stripped of whitespace, a
leading '+' and leading zeros dropped, '-0' read as '0') and never converts to int, so no
reply, however long, can make it raise.

Each operand first draws its digit count uniformly from min_digits..digits, then its value
uniformly among numbers of that many digits (0-9 for one digit), so short numbers are as
common as long ones.

A problem's difficulty class (`difficulty`, what task.curriculum draws by): each operand's
digit count between its operators, then the number of result digits that a carry or a borrow
made (`carries`), summed over the chain's steps: "2+2 c0" for 57+31=88, "2+2 c1" for
57+35=92, "2+2 c2" for 57+68=125, "1+2 c2" for 5+97=102."""

from __future__ import annotations

import itertools
import random
import re
from dataclasses import dataclass
from typing import ClassVar

from selfplay.tasks.base import Problem, Score, draw_held_out, draw_train

INTEGER = re.compile(r"[+-]?[0-9]+")  # ASCII digits only: int() would also take '٣' and '1_0'


def normalise(text: str) -> str | None:
    """The canonical text of an integer ('-42', '0'), or None when `text` is not one."""
    text = text.strip()
    if not INTEGER.fullmatch(text):
        return None
    digits = text.lstrip("+-").lstrip("0") or "0"
    return "-" + digits if text[0] == "-" and digits != "0" else digits


def final_answer(reply: str) -> str:
    """The answer part of a reply: after the last ';' of a scratchpad, else the whole reply."""
    return reply.rpartition(";")[2]


def carries(p: int, q: int, add: bool) -> int:
    """The digits of p + q (add) or p - q (p >= q >= 0) that a carry or a borrow made: the
    columns, the result's new leading one included, where the result's digit is not the
    column's own sum (difference) mod 10."""
    result = p + q if add else p - q
    n = 0
    while p or q or result:
        column = p % 10 + q % 10 if add else p % 10 - q % 10
        n += column % 10 != result % 10
        p, q, result = p // 10, q // 10, result // 10
    return n


@dataclass(frozen=True)
class Arithmetic:
    digits: int = 2  # most digits in an operand
    terms: int = 2  # numbers in the chain (2: a+b)
    min_digits: int = 1  # fewest digits in an operand
    subtract: float = 0.0  # probability that each operator is '-' rather than '+'
    scratchpad: bool = False  # SFT targets show the running sums before the answer
    held_out_percent: int = 10  # share of problem ids (by hash) in the held-out split

    name: ClassVar[str] = "arithmetic"

    def __post_init__(self):
        checks = {
            "digits": self.digits >= 1,
            "terms": self.terms >= 2,
            "min_digits": 1 <= self.min_digits <= self.digits,
            "subtract": 0.0 <= self.subtract <= 1.0,
            "held_out_percent": 0 <= self.held_out_percent < 100,
        }
        rules = {
            "digits": ">= 1",
            "terms": ">= 2",
            "min_digits": "between 1 and digits",
            "subtract": "a probability in [0, 1]",
            "held_out_percent": "in [0, 100)",
        }
        for key, ok in checks.items():
            if not ok:
                raise ValueError(f"task.params.{key}: must be {rules[key]} (got {getattr(self, key)!r})")

    @property
    def max_reply_chars(self) -> int:
        """The longest target, plus 2 characters of slack (a '+', a space)."""
        largest = self.terms * (10**self.digits - 1)  # bounds |every running sum|
        answer = len(str(largest)) + (self.subtract > 0)  # room for a '-'
        if not self.scratchpad:
            return answer + 2
        step = answer + 1 + self.digits + 1 + answer + 1  # "357-7=350;"
        return (self.terms - 1) * step + answer + 2

    # ---- Problems ----------------------------------------------------------------------
    def problem(self, seed: int) -> Problem:
        return draw_train(self.name, seed, self.held_out_percent, self._draw)

    def held_out(self, n: int) -> list[Problem]:
        return draw_held_out(self.name, n, self.held_out_percent, self._draw, self._space, self._size())

    def _operand_range(self, digits: int) -> range:
        return range(0 if digits == 1 else 10 ** (digits - 1), 10**digits)

    def _draw(self, rng: random.Random) -> Problem:
        operands = [
            rng.choice(self._operand_range(rng.randint(self.min_digits, self.digits)))
            for _ in range(self.terms)
        ]
        operators = ["-" if rng.random() < self.subtract else "+" for _ in range(self.terms - 1)]
        return self._make(operands, operators)

    def _operators(self) -> list[str]:
        """The operators a draw can produce (random() < p is never true at 0, always at 1)."""
        return ["+"] * (self.subtract < 1) + ["-"] * (self.subtract > 0)

    def _values(self) -> range:
        """Every operand a draw can produce."""
        return range(self._operand_range(self.min_digits).start, 10**self.digits)

    def _size(self) -> int:
        return len(self._values()) ** self.terms * len(self._operators()) ** (self.terms - 1)

    def _space(self):
        """Every id a draw can produce."""
        for operands in itertools.product(self._values(), repeat=self.terms):
            for operators in itertools.product(self._operators(), repeat=self.terms - 1):
                yield self._make(list(operands), list(operators)).id

    def _make(self, operands: list[int], operators: list[str]) -> Problem:
        expression = str(operands[0])
        running = operands[0]
        steps = []
        for op, value in zip(operators, operands[1:]):
            total = running + value if op == "+" else running - value
            steps.append(f"{running}{op}{value}={total}")
            expression += f"{op}{value}"
            running = total
        answer = str(running)
        target = ";".join([*steps, answer]) if self.scratchpad else answer
        return Problem(
            task=self.name,
            id=f"{self.name}:{expression}",
            prompt=expression + "=",
            reference=answer,
            target=target,
        )

    def difficulty(self, problem: Problem) -> str:
        """The problem's difficulty class: "2+2 c1" (see the module's docstring). Each step
        of the chain adds or subtracts magnitudes, as written by hand: a running sum and an
        operand of the same sign add (carries), of opposite signs the smaller is taken from
        the larger (borrows)."""
        tokens = re.findall(r"[+-]|[0-9]+", problem.id.partition(":")[2])
        operands, operators = [int(t) for t in tokens[::2]], tokens[1::2]
        shape = str(len(tokens[0])) + "".join(op + str(len(t)) for op, t in zip(operators, tokens[2::2]))
        running, total = operands[0], 0
        for op, value in zip(operators, operands[1:]):
            step = value if op == "+" else -value
            a, b = abs(running), abs(step)
            if running * step >= 0:  # same signs (or a zero): the magnitudes add
                total += carries(a, b, add=True)
            else:
                total += carries(max(a, b), min(a, b), add=False)
            running += step
        return f"{shape} c{total}"

    # ---- Scoring -----------------------------------------------------------------------
    def score(self, prompt: str, response: str, reference: str) -> Score:
        """total = correct: 1 when the final answer equals the reference, else 0.
        format: the final answer is an integer; valid mirrors it."""
        answer = normalise(final_answer(response)) if isinstance(response, str) else None
        if answer is None:
            return Score(total=0.0, parts={"correct": 0.0, "format": 0.0}, valid=False, reason="format")
        correct = float(answer == normalise(reference))
        return Score(total=correct, parts={"correct": correct, "format": 1.0})
