"""Solver + checker: one policy in two roles on CodeGen's problems (an integer function of x
from a one-line spec). The solver writes the function, the checker writes a unit test, and
the sandbox runs every solution against every test of its group.

  role 0, solver   prompt "f: add 3 then double\\n"   reply "(x+3)*2"   (CodeGen's reply)
  role 1, checker  prompt "t: add 3 then double\\n"   reply "f(4)==(4+3)*2"  (a test at its own x)

The prompt's first letter is the role token, as a game's observation names its seat. The k
samples of each role share the problem's group; the builder computes advantages per
(group, role), so each role is judged against its own samples (role-conditioned, as in the
games).

Training signal, from the group alone (the hidden tests never reach a reward):
  The consensus is CodeT's dual agreement (Chen et al. 2022): the group's well-formed
  solutions that ran to the end (a timeout, a memory hog or a forbidden call says nothing
  about the tests) are clustered by the set of its distinct well-formed tests they pass, a cluster
  scores (samples in it) x (tests it passes), and the best cluster's tests are the agreed
  ones (none when no solution passes any test).
  solver   the share of the agreed tests it passes (0 when none are agreed).
  checker  1 when its test is agreed and one of those solutions fails it, else 0: a
           test every solution passes (wrong ones included) cannot tell them apart and
           earns nothing, and one the consensus fails is taken to be wrong.
Parts kept beside the reward (never part of it): `all_pass` (the solution passes the hidden
tests) and `correct` (the test holds for the spec), so curves show what the roles really do.

Evaluation (`select`): k solutions and k tests per held-out problem, two picks by the
model's own tests: the solution passing most of them, and CodeT's (the dual agreement: the
samples passing the same tests, times the tests they pass), each compared by the hidden
tests with a uniform pick among all k (a tie: the expected value of a uniform pick among
the tied).

A test is `f(X)==EXPECTED`: X one digit, optionally negative, and EXPECTED the value the test
expects, written as integer arithmetic on literals (+ - * %, ** to a literal exponent up to
MAX_POWER, parentheses; no names, no calls; at most MAX_DIGITS digits, bounded from the
literals before anything runs), which the sandbox works out as a calculator would: a 1M-parameter model
cannot multiply in its head, but it can state what to compute, as a person writes
`assert f(4) == (4 + 3) * 2`. A test is parsed (never evaluated here), and the sandbox runs
`assert type(r := f(X)) is int and r == (EXPECTED)` rebuilt from the parse (codegen.int_test). Whether a test holds for the spec (the
`correct` part) is found the same way: by running the canonical solution against it."""

from __future__ import annotations

import ast
import math
import random
import re
from dataclasses import dataclass
from typing import ClassVar

from selfplay.tasks.base import Problem, Score
from selfplay.tasks.codegen import CodeGen, hidden_tests, int_test

ROLES = ("solver", "checker")
SOLVER, CHECKER = range(len(ROLES))
CHECKER_PREFIX = "t: "  # the solver's prompt starts "f: " (CodeGen's)
MAX_INPUT = 9  # a test's x is one digit, optionally negative
MAX_POWER = 4  # the largest exponent a test's expected value may use
MAX_DIGITS = 40  # and at most this many digits it may reach (bounded before anything runs)
TEST = re.compile(r"f\((-?[0-9])\)==(.+)")
# the nodes an expected value may use: integer literals, + - * % **, unary minus and plus
ARITHMETIC = (ast.Expression, ast.BinOp, ast.UnaryOp, ast.Constant)
ARITHMETIC += (ast.Add, ast.Sub, ast.Mult, ast.Mod, ast.Pow, ast.USub, ast.UAdd)


def parse_test(reply: str, limit: int = 64) -> tuple[int, str] | None:
    """(x, expected) of a checker reply `f(x)==EXPECTED` (see the module), or None when it is
    malformed or longer than `limit` characters (the task passes its max_reply_chars)."""
    if not isinstance(reply, str) or len(reply) > limit:
        return None
    m = TEST.fullmatch(reply.strip())
    if m is None:
        return None
    try:
        tree = ast.parse(m[2], mode="eval")
    except Exception:  # SyntaxError, ValueError (NUL bytes), RecursionError
        return None
    for node in ast.walk(tree):
        if not isinstance(node, ARITHMETIC) or (
            isinstance(node, ast.Constant) and type(node.value) is not int
        ):
            return None
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.Pow):
            exponent = node.right
            if not (isinstance(exponent, ast.Constant) and type(exponent.value) is int):
                return None
            if not 0 <= exponent.value <= MAX_POWER:
                return None
    if digits(tree.body) > MAX_DIGITS:  # (9**4)**4**...: a value too large to be a test's
        return None
    return int(m[1]), ast.unparse(tree)


def digits(node: ast.AST) -> float:
    """An upper bound on log10(|value| + 1) of a parsed ARITHMETIC expression, worked out from
    its literals' sizes alone (nothing is evaluated)."""
    if isinstance(node, ast.Constant):
        return math.log10(abs(node.value) + 1)
    if isinstance(node, ast.UnaryOp):
        return digits(node.operand)
    left, right = digits(node.left), digits(node.right)
    if isinstance(node.op, ast.Mult):
        return left + right
    if isinstance(node.op, ast.Mod):  # |a % b| < |b|
        return right
    if isinstance(node.op, ast.Pow):
        return left * node.right.value
    return max(left, right) + math.log10(2)  # + and -


def test_line(test: tuple[int, str]) -> str:
    x, expected = test
    return int_test(x, f"({expected})")


def at(expression: str, x: int) -> str:
    """A canonical expression in x with the literal x in its place."""
    return expression.replace("x", str(x) if x >= 0 else f"({x})")


def consensus(passes: list[tuple[bool, ...]], counts: list[int]) -> tuple[bool, ...] | None:
    """CodeT's dual agreement: `passes[i]` is distinct solution i's pass vector over the tests,
    `counts[i]` how many samples wrote it. Solutions with the same vector form a cluster,
    scored (samples) x (tests passed); the best cluster's vector (ties: more samples, then
    the first seen), or None when no cluster passes any test."""
    clusters: dict[tuple[bool, ...], int] = {}
    for vector, n in zip(passes, counts):
        clusters[vector] = clusters.get(vector, 0) + n
    best, best_key = None, (0, 0)
    for vector, n in clusters.items():
        key = (n * sum(vector), n)
        if sum(vector) and key > best_key:
            best, best_key = vector, key
    return best


def best_mean(values: list[float], keys: list[float]) -> float:
    """The mean of `values` over the entries whose key is the largest (a uniform pick among
    the tied: its expected value)."""
    top = max(keys)
    picked = [v for v, k in zip(values, keys) if k == top]
    return sum(picked) / len(picked)


@dataclass(frozen=True)
class SolverChecker(CodeGen):
    name: ClassVar[str] = "solver_checker"
    roles: ClassVar[tuple[str, ...]] = ROLES

    def solution(self, reply: str) -> str | None:
        """CodeGen's, with CodeGen's reply limit: a solution is no longer for the checker's."""
        if isinstance(reply, str) and len(reply) > CodeGen.max_reply_chars.fget(self):
            return None
        return super().solution(reply)

    @property
    def max_reply_chars(self) -> int:
        """The checker's longest well-formed reply (`f(-9)==` and the longest canonical
        expression at x = -9, CodeGen's SLACK included) is longer than the solver's."""
        return len(f"f(-{MAX_INPUT})==") + CodeGen.max_reply_chars.fget(self) + len(f"({-MAX_INPUT})") - 1

    def role_prompt(self, problem: Problem, role: int) -> str:
        return problem.prompt if role == SOLVER else CHECKER_PREFIX + problem.prompt[len("f: ") :]

    def role_target(self, problem: Problem, role: int, rng: random.Random) -> str:
        """A correct reply in `role`: the canonical expression, or a true test at a random x."""
        if role == SOLVER:
            return problem.target
        x = rng.randint(-MAX_INPUT, MAX_INPUT)
        return f"f({x})=={at(problem.target, x)}"

    # ---- Scoring a group -----------------------------------------------------------------
    def _run(self, problem: Problem, solutions: list[str], tests: list[tuple[int, str]]):
        """{distinct well-formed solution: (hidden all_pass, pass vector over `tests`, reason)},
        and whether each test holds for the spec (the canonical solution's pass vector; a
        canonical run that timed out on a loaded machine marks every test as not holding,
        which only the `correct` part, never a reward, reads)."""
        from selfplay.sandbox import Limits, run_tests

        hidden = hidden_tests(problem.reference)
        asserts = hidden + [test_line(t) for t in tests]
        out = {}
        for reply in dict.fromkeys([problem.target, *solutions]):
            source = self.solution(reply)
            if source is None:
                continue
            report = run_tests(source, asserts, limits=Limits())
            passed = [bool(p) for p in report.passed]
            passed += [False] * (len(asserts) - len(passed))
            reason = None if report.reason == "ok" else report.reason
            out[reply] = (float(all(passed[: len(hidden)])), tuple(passed[len(hidden) :]), reason)
        truth = out[problem.target][1]
        if problem.target not in solutions:
            del out[problem.target]
        return out, truth

    def _trial(self, problem: Problem, solutions: list[str], tests: list[str | None]):
        """Parse `tests` (None: not a test) and run the solutions against the distinct
        well-formed ones: (each test parsed or None, the distinct tests, `_run`'s runs, and
        whether each distinct test holds)."""
        parsed = [None if t is None else parse_test(t, self.max_reply_chars) for t in tests]
        distinct = list(dict.fromkeys(t for t in parsed if t is not None))
        runs, truth = self._run(problem, solutions, distinct)
        return parsed, distinct, runs, truth

    def score_group(self, problem: Problem, replies: list[tuple[int, str]]) -> list[Score]:
        """The Score of each (role, reply) of one problem's group (see the module)."""
        solutions = [text for role, text in replies if role == SOLVER]
        checks = [text if role == CHECKER else None for role, text in replies]
        parsed, tests, runs, truth = self._trial(problem, solutions, checks)
        counts: dict[str, int] = {}  # samples of each solution that ran to the end (a timeout
        for text in solutions:  # or a forbidden call passes nothing and says nothing of the tests)
            if text in runs and runs[text][2] is None:
                counts[text] = counts.get(text, 0) + 1
        vectors = [runs[s][1] for s in counts]
        agreed = consensus(vectors, list(counts.values()))
        n_agreed = sum(agreed) if agreed else 0
        scores = []
        for (role, text), test in zip(replies, parsed):
            if role == SOLVER:
                if text not in runs:
                    scores.append(
                        Score(0.0, {"own_tests": 0.0, "all_pass": 0.0, "format": 0.0}, False, "format")
                    )
                    continue
                all_pass, vector, reason = runs[text]
                own = sum(p and a for p, a in zip(vector, agreed)) / n_agreed if n_agreed else 0.0
                scores.append(
                    Score(own, {"own_tests": own, "all_pass": all_pass, "format": 1.0}, True, reason)
                )
            else:
                if test is None:
                    scores.append(Score(0.0, {"agreed": 0.0, "correct": 0.0, "format": 0.0}, False, "format"))
                    continue
                j = tests.index(test)
                discriminates = any(not v[j] for v in vectors)
                agrees = agreed is not None and agreed[j]
                reward = float(agrees and discriminates)
                correct = float(truth[j])
                scores.append(Score(reward, {"agreed": float(agrees), "correct": correct, "format": 1.0}))
        return scores

    # ---- Evaluation ----------------------------------------------------------------------
    def select(self, problem: Problem, solutions: list[str], tests: list[str]) -> dict[str, float]:
        """One held-out problem's selection figures from k sampled solutions and tests: the
        hidden pass rate (all hidden tests pass) of each solution, of the solution picked by
        the tests (most passed), of CodeT's pick (the number of samples passing the same
        distinct tests x the tests passed; a tie in either: the mean over the tied) and of a
        uniform pick, and the share of tests that are well formed and that hold."""
        parsed, distinct, runs, truth = self._trial(problem, solutions, tests)
        holds = dict(zip(distinct, truth))
        hidden = [runs[s][0] if s in runs else 0.0 for s in solutions]
        vectors = [runs[s][1] if s in runs else () for s in solutions]  # malformed: passes none
        passed = [sum(v) for v in vectors]
        cluster = [vectors.count(v) for v in vectors]  # samples that pass the same tests
        return {
            "hidden": hidden,  # each solution's hidden all_pass, in order
            "selected_pass": best_mean(hidden, passed),
            "consensus_pass": best_mean(hidden, [n * p for n, p in zip(cluster, passed)]),
            "random_pass": sum(hidden) / len(hidden),
            "test_accuracy": sum(t is not None and holds[t] for t in parsed) / len(parsed),
            "test_valid": sum(t is not None for t in parsed) / len(parsed),
        }
