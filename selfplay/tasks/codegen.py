"""CodeGen: write an integer function of x from a one-line spec, checked by hidden tests.

  prompt     "f: add 3 then double\\n"       a chain of 1..steps operations on x
  target     "(x+3)*2"                      a Python expression in x, the canonical one
  reference  '{"tests": [[0, 6], [-4, -2], [7, 20], [-11, -16], [5, 16]]}'
  id         "codegen:add 3 then double"

The reply is only an expression, so the model never writes boilerplate: the scorer wraps it as
`def f(x): return (<reply>)` and runs `assert f(0) == 6`-style lines (the value an int: int_test) in selfplay.sandbox, never
in this process. A reply with a newline, longer than max_reply_chars, or that does not parse
as one expression is rejected before anything runs (valid False, reason "format"); parsing
is safe here, evaluating is not.

The hidden inputs come from an rng seeded by the problem id, so one id has one reference
whichever seed drew it: 0, one negative, and the rest distinct from -20..20.

Operations (36): add k and subtract k (k 1-9), times k (3-9), double, square, negate, mod k
(2-9, Python's floored %). The canonical expression adds parentheses only where Python's
precedence needs them; the test suite checks it against a direct interpreter of the spec."""

from __future__ import annotations

import ast
import json
import random
from dataclasses import dataclass
from typing import ClassVar

from selfplay.tasks.base import Problem, Score, draw_held_out, draw_train

# Precedence of an expression's outermost operator, loosest first.
ADD, MUL, UNARY, POWER, ATOM = range(5)

OPS = (
    [f"add {k}" for k in range(1, 10)]
    + [f"subtract {k}" for k in range(1, 10)]
    + [f"times {k}" for k in range(3, 10)]
    + ["double", "square", "negate"]
    + [f"mod {k}" for k in range(2, 10)]
)
THEN = " then "
INPUTS = range(-20, 21)
SLACK = 4  # reply room beyond the longest canonical expression: "(x+3)*(x+3)" for "(x+3)**2"


def apply(op: str, x: int) -> int:
    """The value of one operation on x: the spec's meaning, independent of any expression."""
    word, _, k = op.partition(" ")
    if word == "add":
        return x + int(k)
    if word == "subtract":
        return x - int(k)
    if word == "times":
        return x * int(k)
    if word == "mod":
        return x % int(k)
    return {"double": 2 * x, "square": x * x, "negate": -x}[word]


def _wrap(expression: str, level: int, needed: int) -> str:
    return expression if level >= needed else f"({expression})"


def compose(op: str, expression: str, level: int) -> tuple[str, int]:
    """`op` applied to an expression whose outermost operator has precedence `level`: the new
    expression and its level."""
    word, _, k = op.partition(" ")
    if word in ("add", "subtract"):
        return f"{expression}{'+' if word == 'add' else '-'}{k}", ADD  # left-associative: no parens
    if word in ("times", "double", "mod"):
        symbol, k = ("%", k) if word == "mod" else ("*", k or "2")
        return f"{_wrap(expression, level, MUL)}{symbol}{k}", MUL
    if word == "square":
        return f"{_wrap(expression, level, ATOM)}**2", POWER  # x**2**2 would be x**4
    return f"-{_wrap(expression, level, POWER)}", UNARY  # negate; -(-x), not --x


def canonical(ops: list[str]) -> str:
    expression, level = "x", ATOM
    for op in ops:
        expression, level = compose(op, expression, level)
    return expression


def int_test(x: int, expected: str) -> str:
    """The assert line for f(x) == expected: the value must be an int itself (a reply's
    object whose __eq__ says yes to everything, `type('',(),{'__eq__':id})()`, passed
    every test of `assert f(x) == y`; type() is not fooled by __class__ or a subclass)."""
    return f"assert type(r := f({x})) is int and r == {expected}"


def hidden_tests(reference: str) -> list[str]:
    """The assert lines a solution defining f must pass."""
    return [int_test(x, y) for x, y in json.loads(reference)["tests"]]


@dataclass(frozen=True)
class CodeGen:
    steps: int = 2  # most operations in a spec (each spec draws 1..steps uniformly)
    held_out_percent: int = 10  # share of problem ids (by hash) in the held-out split
    tests: int = 5  # hidden tests per problem

    name: ClassVar[str] = "codegen"

    def __post_init__(self):
        if self.steps < 1:
            raise ValueError(f"task.params.steps: must be >= 1 (got {self.steps!r})")
        if not 0 <= self.held_out_percent < 100:
            raise ValueError(
                f"task.params.held_out_percent: must be in [0, 100) (got {self.held_out_percent!r})"
            )
        if not 1 <= self.tests <= len(INPUTS):
            raise ValueError(f"task.params.tests: must be between 1 and {len(INPUTS)} (got {self.tests!r})")

    @property
    def max_reply_chars(self) -> int:
        """The longest canonical expression of up to `steps` operations, plus SLACK. Lengths
        only grow by a constant per operation, so the longest expression at each precedence
        level after each step is enough to carry (a dynamic programme, not 36**steps specs)."""
        longest = {ATOM: 1}  # level -> longest expression with that outermost operator
        best = 0
        for _ in range(self.steps):
            grown: dict[int, int] = {}
            for level, length in longest.items():
                for op in OPS:
                    expression, new = compose(op, "x" * length, level)
                    grown[new] = max(grown.get(new, 0), len(expression))
            longest = grown
            best = max(best, *longest.values())
        return best + SLACK

    # ---- Problems ----------------------------------------------------------------------
    def problem(self, seed: int) -> Problem:
        return draw_train(self.name, seed, self.held_out_percent, self._draw)

    def held_out(self, n: int) -> list[Problem]:
        size = sum(len(OPS) ** k for k in range(1, self.steps + 1))
        return draw_held_out(self.name, n, self.held_out_percent, self._draw, self._space, size)

    def _draw(self, rng: random.Random) -> Problem:
        return self._make([rng.choice(OPS) for _ in range(rng.randint(1, self.steps))])

    def difficulty(self, problem: Problem) -> str:
        """The problem's difficulty class (task.curriculum): its number of operations, "3 ops"."""
        return f"{problem.id.partition(':')[2].count(THEN) + 1} ops"

    def _space(self):
        """Every id a draw can produce."""
        return (f"{self.name}:{THEN.join(spec)}" for spec in self.specs())

    def specs(self):
        """Every spec a draw can produce, as its list of operations."""
        specs = [[op] for op in OPS]
        for length in range(1, self.steps + 1):
            yield from specs
            if length < self.steps:
                specs = [[*spec, op] for spec in specs for op in OPS]

    def _make(self, ops: list[str]) -> Problem:
        spec = THEN.join(ops)
        problem_id = f"{self.name}:{spec}"
        rng = random.Random(f"{problem_id}:tests")
        inputs = [0, rng.randint(-20, -1)]
        inputs += rng.sample([x for x in INPUTS if x not in inputs], len(INPUTS) - 2)
        tests = []
        for x in inputs[: self.tests]:
            y = x
            for op in ops:
                y = apply(op, y)
            tests.append([x, y])
        return Problem(
            task=self.name,
            id=problem_id,
            prompt=f"f: {spec}\n",
            reference=json.dumps({"tests": tests}),
            target=canonical(ops),
        )

    # ---- Scoring -----------------------------------------------------------------------
    def solution(self, reply: str) -> str | None:
        """The module the sandbox runs for `reply`, or None when the reply is malformed: not a
        string, a newline, too long, or not exactly one Python expression."""
        if not isinstance(reply, str) or "\n" in reply or "\r" in reply or len(reply) > self.max_reply_chars:
            return None
        source = f"def f(x):\n    return ({reply.strip()})\n"
        try:
            ast.parse(reply.strip(), mode="eval")
            # a '#' in the reply would comment out the closing parenthesis; compiled, not only
            # parsed: the compiler refuses what parses ('await x' outside an async function)
            compile(source, "<solution>", "exec", dont_inherit=True)
        except Exception:  # SyntaxError, ValueError (NUL bytes), RecursionError
            return None
        return source

    def score(self, prompt: str, response: str, reference: str) -> Score:
        """total = all_pass: 1 when every hidden test passes, else 0 (pass_rate keeps the partial
        credit as a part). format: the reply is one expression; valid mirrors it."""
        source = self.solution(response)
        if source is None:
            return Score(
                total=0.0,
                parts={"pass_rate": 0.0, "all_pass": 0.0, "format": 0.0},
                valid=False,
                reason="format",
            )
        from selfplay.sandbox import Limits, run_tests  # lazy: only scoring needs the sandbox

        tests = hidden_tests(reference)
        report = run_tests(source, tests, limits=Limits())
        passed = sum(bool(p) for p in report.passed[: len(tests)])
        all_pass = float(passed == len(tests))
        return Score(
            total=all_pass,
            parts={"pass_rate": passed / len(tests), "all_pass": all_pass, "format": 1.0},
            reason=None if report.reason == "ok" else report.reason,
        )
