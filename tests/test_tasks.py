"""Tasks with a checker: splits, checkers and SFT targets, without Ray or a model.

CodeGen's scoring path is exercised with an in-process stand-in for selfplay.sandbox (these
tests run only this suite's own expressions); the tests marked "real sandbox" skip until
selfplay/sandbox.py exists."""

from __future__ import annotations

import itertools
import json
import random
import re
import sys
import types
from dataclasses import dataclass, field

import pytest

from selfplay.tasks import TASKS, held_out_id, make_task
from selfplay.tasks.arithmetic import Arithmetic, carries
from selfplay.tasks.base import ENUMERATE_LIMIT, draw_held_out
from selfplay.tasks.codegen import OPS, SLACK, CodeGen, apply, canonical, hidden_tests
from selfplay.tasks.describe import Describe
from selfplay.tasks.judges import Constitution
from selfplay.tasks.refine import CritiqueRefine
from selfplay.tasks.words import NumberWords

TASK_CONFIGS = [
    Arithmetic(),
    Arithmetic(digits=3, terms=4, subtract=0.5, scratchpad=True),
    Arithmetic(digits=2, min_digits=2, terms=3, subtract=1.0),
    CodeGen(),
    CodeGen(steps=3, tests=8),
    NumberWords(),
    NumberWords(min_value=1000, max_value=60_000),
    Describe(Constitution.from_config([{"name": "mentions"}])),
]
CONFIG_IDS = ["arith", "arith-scratch", "arith-minus", "codegen", "codegen-3", "words", "words-5", "describe"]


# ---- Splits ----------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASK_CONFIGS, ids=CONFIG_IDS)
def test_the_same_seed_draws_the_same_problem(task):
    assert [task.problem(s) for s in range(50)] == [task.problem(s) for s in range(50)]
    assert len({task.problem(s).id for s in range(50)}) > 20  # and seeds do differ


@pytest.mark.parametrize("task", TASK_CONFIGS, ids=CONFIG_IDS)
def test_train_problems_are_never_held_out(task):
    held = {p.id for p in task.held_out(100)}
    for seed in range(3000):
        problem = task.problem(seed)
        assert not held_out_id(problem.id, task.held_out_percent)
        assert problem.id not in held


@pytest.mark.parametrize("task", TASK_CONFIGS, ids=CONFIG_IDS)
def test_held_out_problems_are_distinct_held_out_and_a_fixed_sequence(task):
    problems = task.held_out(100)
    assert len({p.id for p in problems}) == 100
    assert all(held_out_id(p.id, task.held_out_percent) for p in problems)
    assert task.held_out(30) == problems[:30]
    assert type(task)(**vars(task)).held_out(100) == problems  # a fresh instance: same set


def test_held_out_asking_beyond_a_small_space_raises():
    # digits=1, terms=2: 100 problems a+b with a, b in 0..9, counted here independently
    held = sum(held_out_id(f"arithmetic:{a}+{b}", 10) for a in range(10) for b in range(10))
    task = Arithmetic(digits=1)
    assert len(task.held_out(held)) == held
    with pytest.raises(ValueError, match=rf"held_out\({held + 1}\).*space of 100"):
        task.held_out(held + 1)

    # steps=1: one spec per operation
    held = sum(held_out_id(f"codegen:{op}", 10) for op in OPS)
    assert len(CodeGen(steps=1).held_out(held)) == held
    with pytest.raises(ValueError, match="space of 36"):
        CodeGen(steps=1).held_out(held + 1)


def test_held_out_in_a_huge_space_raises_at_half_the_expected_share_without_drawing():
    task = Arithmetic(digits=4, terms=3)  # 10**12 problems
    assert task._size() > ENUMERATE_LIMIT
    with pytest.raises(ValueError, match="half"):
        task.held_out(10**12)
    # one more than half the share raises, without a draw (a draw would fail the test)
    half = task._size() * task.held_out_percent // 200

    def no_draw(rng):
        raise AssertionError("drew a problem")

    with pytest.raises(ValueError, match="half"):
        draw_held_out("t", half + 1, task.held_out_percent, no_draw, lambda: iter(()), task._size())


def test_no_held_out_split_gives_no_held_out_problems():
    task = Arithmetic(held_out_percent=0)
    assert task.held_out(0) == []
    with pytest.raises(ValueError):
        task.held_out(1)


def test_problem_space_sizes_match_an_enumeration():
    for task in [
        Arithmetic(digits=1),
        Arithmetic(digits=1, terms=3, subtract=0.5),
        Arithmetic(digits=2, min_digits=2),
    ]:
        ids = list(task._space())
        assert len(ids) == len(set(ids)) == task._size()
    assert Arithmetic()._size() == 100**2
    # counted by hand, not by the code's own enumeration (which shares _values with _size)
    assert Arithmetic(digits=2, min_digits=2)._size() == 90**2
    assert Arithmetic(digits=1, terms=3, subtract=0.5)._size() == 10**3 * 2**2
    assert len(set(CodeGen()._space())) == 36 + 36**2


# ---- Targets ---------------------------------------------------------------------------
@pytest.mark.parametrize("task", TASK_CONFIGS, ids=CONFIG_IDS)
def test_prompts_and_targets_use_only_tokenizer_characters_and_fit_the_reply_limit(task):
    from selfplay.model import CHARACTERS

    allowed = set(CHARACTERS)
    for problem in [task.problem(s) for s in range(500)] + task.held_out(50):
        assert set(problem.prompt) <= allowed and set(problem.target) <= allowed, problem
        assert len(problem.target) <= task.max_reply_chars


def test_arithmetic_max_reply_chars_bounds_every_target_of_a_small_space():
    for params in [
        {},
        {"subtract": 0.5, "terms": 3, "digits": 1},
        {"scratchpad": True, "terms": 3, "digits": 1},
    ]:
        task = Arithmetic(**params)
        longest = 0
        for operands in itertools.product(task._values(), repeat=task.terms):
            for operators in itertools.product(task._operators(), repeat=task.terms - 1):
                longest = max(longest, len(task._make(list(operands), list(operators)).target))
        assert longest <= task.max_reply_chars <= longest + 3, params


def test_arithmetic_answers_match_an_independent_evaluation():
    task = Arithmetic(digits=3, terms=4, subtract=0.5, scratchpad=True)
    for seed in range(300):
        problem = task.problem(seed)
        # left to right, from the prompt's text alone
        tokens = re.findall(r"[+-]|[0-9]+", problem.prompt[:-1])
        value = int(tokens[0])
        for op, number in zip(tokens[1::2], tokens[2::2]):
            value = value + int(number) if op == "+" else value - int(number)
        assert problem.reference == str(value)
        assert problem.target.split(";")[-1] == str(value)
        assert problem.id == "arithmetic:" + problem.prompt[:-1]


@pytest.mark.parametrize(
    "operands, operators, difficulty",
    [
        ([57, 31], ["+"], "2+2 c0"),
        ([57, 35], ["+"], "2+2 c1"),  # 7 + 5 carries into the tens
        ([57, 68], ["+"], "2+2 c2"),  # into the tens and into a new hundreds digit
        ([5, 97], ["+"], "1+2 c2"),
        ([3, 4], ["+"], "1+1 c0"),
        ([30, 12], ["-"], "2-2 c1"),  # 0 - 2 borrows from the tens
        ([12, 30, 5], ["-", "+"], "2-2+1 c1"),  # 30 - 12 borrows; then 18 - 5 does not
        ([12, 30, 50], ["-", "-"], "2-2-2 c1"),  # -18 - 50: the magnitudes add, 18 + 50, no carry
    ],
)
def test_arithmetic_difficulty_hand_cases(operands, operators, difficulty):
    task = Arithmetic(digits=2, terms=len(operands), subtract=0.5)
    assert task.difficulty(task._make(operands, operators)) == difficulty


def test_carries_match_schoolbook_column_arithmetic():
    def schoolbook(p: int, q: int, add: bool) -> int:  # carries (borrows) taken, column by column
        taken, carry = 0, 0
        while p or q or carry:
            column = p % 10 + q % 10 + carry if add else p % 10 - q % 10 - carry
            carry = int(column >= 10) if add else int(column < 0)
            taken += carry
            p, q = p // 10, q // 10
        return taken

    for p in range(0, 1000, 7):
        for q in range(0, 1000, 3):
            assert carries(p, q, add=True) == schoolbook(p, q, add=True), (p, q)
            if p >= q:
                assert carries(p, q, add=False) == schoolbook(p, q, add=False), (p, q)


def test_codegen_difficulty_is_its_number_of_operations():
    task = CodeGen(steps=3)
    assert task.difficulty(task._make(["add 3", "double"])) == "2 ops"
    assert {task.difficulty(task.problem(s)) for s in range(200)} == {"1 ops", "2 ops", "3 ops"}


def test_arithmetic_scratchpad_format():
    task = Arithmetic(terms=3, subtract=1.0, scratchpad=True)
    problem = task._make([12, 45, 70], ["+", "-"])
    assert problem.prompt == "12+45-70="
    assert problem.target == "12+45=57;57-70=-13;-13"
    assert problem.reference == "-13"


def test_every_arithmetic_target_scores_one():
    for task in TASK_CONFIGS[:3]:
        for problem in [task.problem(s) for s in range(500)] + task.held_out(100):
            score = task.score(problem.prompt, problem.target, problem.reference)
            assert score.total == 1.0 and score.valid and score.parts == {"correct": 1.0, "format": 1.0}


def test_codegen_canonical_expressions_match_the_spec_for_every_spec_of_two_steps():
    for length in (1, 2):
        for ops in itertools.product(OPS, repeat=length):
            expression = canonical(list(ops))
            for x in range(-20, 21):
                expected = x
                for op in ops:
                    expected = apply(op, expected)
                assert eval(expression, {"x": x}) == expected, (ops, expression)  # our own expression


def test_codegen_canonical_expression_examples():
    assert canonical(["add 3", "double"]) == "(x+3)*2"
    assert canonical(["negate", "square"]) == "(-x)**2"
    assert canonical(["square", "negate"]) == "-x**2"
    assert canonical(["square", "square"]) == "(x**2)**2"
    assert canonical(["negate", "negate"]) == "-(-x)"
    assert canonical(["mod 3", "times 4"]) == "x%3*4"
    assert canonical(["subtract 2", "mod 5"]) == "(x-2)%5"


@pytest.mark.parametrize("steps", [1, 2, 3])
def test_codegen_max_reply_chars_is_the_longest_canonical_expression_plus_slack(steps):
    longest = max(
        len(canonical(list(ops))) for k in range(1, steps + 1) for ops in itertools.product(OPS, repeat=k)
    )
    assert CodeGen(steps=steps).max_reply_chars == longest + SLACK


def test_codegen_references_hold_distinct_inputs_with_zero_and_a_negative():
    task = CodeGen(tests=6)
    for seed in range(200):
        problem = task.problem(seed)
        inputs = [x for x, _ in json.loads(problem.reference)["tests"]]
        assert len(set(inputs)) == 6 and 0 in inputs and min(inputs) < 0
        assert problem.prompt == "f: " + problem.id.removeprefix("codegen:") + "\n"


def test_codegen_one_id_has_one_reference_whichever_seed_drew_it():
    task = CodeGen()
    by_id: dict[str, set[str]] = {}
    for seed in range(2000):
        problem = task.problem(seed)
        by_id.setdefault(problem.id, set()).add(problem.reference)
    assert max(len(refs) for refs in by_id.values()) == 1
    assert len(by_id) < 2000  # ids did repeat


def test_hidden_tests_are_assert_lines_on_an_int():
    assert hidden_tests('{"tests": [[0, 6], [-4, -2]]}') == [
        "assert type(r := f(0)) is int and r == 6",
        "assert type(r := f(-4)) is int and r == -2",
    ]


@pytest.mark.parametrize(
    "reply, total, reason",
    [
        ("(x+3)*2", 1.0, None),
        ("type('',(),{'__eq__':id})()", 0.0, None),  # equal to everything: passed every test
        ("(x+3)*2.0", 0.0, None),  # a float is not the integer function asked for
        ("await x", 0.0, "format"),  # parses, but does not compile
    ],
)
def test_codegen_passes_only_an_int_function(reply, total, reason):
    """Through the real sandbox, with room for a 27-character reply (steps 5)."""
    task = make_task("codegen", steps=5)
    score = task.score("f: add 3 then double\n", reply, '{"tests": [[0, 6], [-4, -2], [1, 8]]}')
    assert (score.total, score.reason) == (total, reason), score


# ---- Arithmetic checker ----------------------------------------------------------------
@pytest.mark.parametrize(
    "reply, reference, correct, valid",
    [
        ("42", "42", 1, True),
        (" 042\n", "42", 1, True),
        ("+42", "42", 1, True),
        ("-0", "0", 1, True),
        ("+000", "0", 1, True),
        ("-007", "-7", 1, True),
        ("7", "-7", 0, True),
        ("43", "42", 0, True),
        ("4 2", "42", 0, False),
        ("", "42", 0, False),
        ("   ", "42", 0, False),
        ("abc", "42", 0, False),
        ("42abc", "42", 0, False),
        ("--42", "42", 0, False),
        ("+-42", "42", 0, False),
        ("4_2", "42", 0, False),
        ("٤٢", "42", 0, False),  # Arabic-Indic digits: not ASCII
        ("42.0", "42", 0, False),
        ("12+30=42;42", "42", 1, True),  # scratchpad: only the final answer counts
        ("1+1=3;42", "42", 1, True),
        ("12+30=42;41", "42", 0, True),
        ("42;", "42", 0, False),
        ("x;y;042", "42", 1, True),
    ],
)
def test_arithmetic_checker_hand_cases(reply, reference, correct, valid):
    score = Arithmetic().score("12+30=", reply, reference)
    assert score.total == correct
    assert score.parts == {"correct": float(correct), "format": float(valid)}
    assert score.valid is valid


def test_arithmetic_checker_never_raises():
    task = Arithmetic()
    rng = random.Random(0)
    replies = ["9" * 1_000_000, "-" + "0" * 100_000 + "42", "\x00", "\ud800", "🙂" * 1000, ";" * 10_000]
    replies += ["".join(chr(rng.randrange(0x110000)) for _ in range(rng.randrange(30))) for _ in range(500)]
    for reply in replies:
        score = task.score("1+1=", reply, "42")
        assert score.total in (0.0, 1.0)
    assert task.score("1+1=", "0" * 1_000_000 + "42", "42").total == 1.0
    assert task.score("1+1=", None, "42").valid is False  # not even a string


# ---- CodeGen checker -------------------------------------------------------------------
@dataclass
class Report:
    passed: list[bool] = field(default_factory=list)
    reason: str = "ok"
    seconds: float = 0.0


def fake_sandbox(monkeypatch, run_tests):
    module = types.ModuleType("selfplay.sandbox")
    module.Limits = lambda: None
    module.run_tests = run_tests
    monkeypatch.setitem(sys.modules, "selfplay.sandbox", module)


def run_in_process(solution, tests, limits=None):
    """Stand-in for the sandbox, for this suite's own replies only."""
    namespace: dict = {}
    exec(solution, namespace)
    passed = []
    for test in tests:
        try:
            exec(test, namespace)
            passed.append(True)
        except Exception:
            passed.append(False)
    return Report(passed=passed)


def must_not_run(solution, tests, limits=None):
    raise AssertionError("the sandbox ran a malformed reply")


@pytest.mark.parametrize(
    "reply",
    [
        "(x+3)*2\n",
        "x+1\nx",
        "x\r",
        "x" + "+0" * 20,  # longer than max_reply_chars
        "",
        "   ",
        "x+",
        "x # )",  # would comment out the closing parenthesis
        "x); import os; (x",
        "x\x00",
        "def f",
        "🙂",
    ],
)
def test_malformed_codegen_replies_score_zero_without_running_the_sandbox(monkeypatch, reply):
    fake_sandbox(monkeypatch, must_not_run)
    score = CodeGen().score("f: add 1\n", reply, '{"tests": [[0, 1]]}')
    assert score.total == 0.0 and not score.valid and score.reason == "format"
    assert score.parts == {"pass_rate": 0.0, "all_pass": 0.0, "format": 0.0}


def test_codegen_scores_partial_credit_as_a_part_and_all_pass_as_the_total(monkeypatch):
    fake_sandbox(monkeypatch, run_in_process)
    task = CodeGen()
    reference = json.dumps({"tests": [[0, 6], [-4, -2], [1, 8], [5, 16]]})  # add 3 then double
    right = task.score("f: add 3 then double\n", " 2*(x+3) ", reference)
    assert right.total == 1.0 and right.valid and right.reason is None
    assert right.parts == {"pass_rate": 1.0, "all_pass": 1.0, "format": 1.0}
    half = task.score("f: add 3 then double\n", "(x+3)*2-x%2", reference)
    assert half.total == 0.0 and half.valid and half.parts["pass_rate"] == 0.5


def test_codegen_passes_the_sandbox_reason_on(monkeypatch):
    fake_sandbox(
        monkeypatch, lambda solution, tests, limits=None: Report([False] * len(tests), "timeout", 2.0)
    )
    score = CodeGen().score("f: square\n", "x**2", '{"tests": [[0, 0], [2, 4]]}')
    assert score.total == 0.0 and score.valid and score.reason == "timeout"
    fake_sandbox(
        monkeypatch, lambda solution, tests, limits=None: Report([True], "crash", 0.1)
    )  # stopped early
    score = CodeGen().score("f: square\n", "x**2", '{"tests": [[0, 0], [2, 4]]}')
    assert score.parts["pass_rate"] == 0.5 and score.total == 0.0 and score.reason == "crash"


def test_every_codegen_target_scores_one_in_process(monkeypatch):
    fake_sandbox(monkeypatch, run_in_process)
    for task in TASK_CONFIGS[3:5]:
        for problem in [task.problem(s) for s in range(300)] + task.held_out(50):
            assert task.score(problem.prompt, problem.target, problem.reference).total == 1.0, problem


def test_every_codegen_target_scores_one_in_the_real_sandbox():
    pytest.importorskip("selfplay.sandbox")
    task = CodeGen()
    for problem in [task.problem(s) for s in range(30)] + task.held_out(10):
        score = task.score(problem.prompt, problem.target, problem.reference)
        assert score.total == 1.0 and score.valid, (problem, score)


def test_a_wrong_expression_scores_zero_in_the_real_sandbox():
    pytest.importorskip("selfplay.sandbox")
    problem = CodeGen()._make(["add 3", "double"])
    score = CodeGen().score(problem.prompt, "x+3*2", problem.reference)
    assert score.total == 0.0 and score.valid and score.parts["all_pass"] == 0.0
    assert score.parts["pass_rate"] < 1.0


# ---- Registry --------------------------------------------------------------------------
# ---- Number words ------------------------------------------------------------------------
def test_number_words_targets_are_num2words_english():
    task = NumberWords()
    hand = {7: "seven", 40: "forty", 101: "one hundred and one", 347: "three hundred and forty-seven"}
    for n, words in hand.items():
        seed = next(s for s in range(10_000) if task._draw(random.Random(s)).id == f"words:{n}")
        problem = task._draw(random.Random(seed))
        assert (problem.prompt, problem.target, problem.reference) == (f"{n}:", words, words)
    big = NumberWords(min_value=1234, max_value=1234)._draw(random.Random(0))
    assert big.target == "one thousand, two hundred and thirty-four"


@pytest.mark.parametrize(
    "reply, correct, valid",
    [
        ("forty-two", 1.0, True),
        ("  forty-two ", 1.0, True),  # the ends are stripped
        ("forty two", 0.0, True),  # a missing hyphen is wrong
        ("Forty-two", 0.0, False),  # only lowercase words are well formed
        ("42", 0.0, False),
        ("", 0.0, False),
    ],
)
def test_number_words_checker_hand_cases(reply, correct, valid):
    score = NumberWords().score("42:", reply, "forty-two")
    assert (score.total, score.parts["correct"], score.valid) == (correct, correct, valid)


def test_every_number_words_target_scores_one_and_fits_the_reply_limit():
    task = NumberWords()
    longest = max(len(task._draw(random.Random(s)).target) for s in range(3000))
    assert longest <= task.max_reply_chars <= longest + 2
    for p in task.held_out(100):
        assert task.score(p.prompt, p.target, p.reference).total == 1.0


def test_make_task_builds_each_task_with_config_params():
    assert set(TASKS) == {"arithmetic", "codegen", "describe", "refine", "solver_checker", "words"}
    task = make_task("arithmetic", digits=3, subtract=1, scratchpad=True)  # an int where a float is declared
    assert task == Arithmetic(digits=3, subtract=1.0, scratchpad=True)
    assert make_task("codegen", steps=1) == CodeGen(steps=1)
    assert make_task("words", max_value=99) == NumberWords(max_value=99)
    assert make_task("refine", digits=3) == CritiqueRefine(digits=3)
    principles = [
        {"name": "brevity", "weight": 0.5, "params": {"max_words": 4}},
        {"name": "no_profanity", "hard": True},
    ]
    assert make_task("describe", principles, held_out_percent=20) == Describe(
        Constitution.from_config(principles), held_out_percent=20
    )


def test_make_task_errors_name_the_task_or_the_parameter():
    with pytest.raises(
        ValueError,
        match=r"^task: unknown task 'chess' \(known: arithmetic, codegen, describe, refine, solver_checker, words\)$",
    ):
        make_task("chess")
    with pytest.raises(
        ValueError,
        match=r"^task\.params\.digitz: unknown parameter of arithmetic \(known: digits, terms, min_digits, "
        r"subtract, scratchpad, held_out_percent\)$",
    ):
        make_task("arithmetic", digitz=3)
    with pytest.raises(ValueError, match=r"^task\.params\.digits: expected int, got '3'$"):
        make_task("arithmetic", digits="3")
    with pytest.raises(ValueError, match=r"^task\.params\.scratchpad: expected bool, got 1$"):
        make_task("arithmetic", scratchpad=1)
    with pytest.raises(ValueError, match=r"^task\.params\.min_digits: must be between 1 and digits"):
        make_task("arithmetic", digits=2, min_digits=3)
    with pytest.raises(ValueError, match=r"^task\.params\.held_out_percent: must be in \[0, 100\)"):
        make_task("codegen", held_out_percent=100)
    with pytest.raises(ValueError, match=r"^task\.params\.steps: must be >= 1"):
        make_task("codegen", steps=0)
    with pytest.raises(ValueError, match=r"^task\.params\.max_value: must be >= min_value"):
        make_task("words", min_value=10, max_value=5)
    with pytest.raises(ValueError, match=r"^task\.params\.max_value: at most 100001 numbers"):
        make_task("words", max_value=10**6)
    with pytest.raises(ValueError, match=r"^task\.principles: the describe task has no checker"):
        make_task("describe")
    with pytest.raises(ValueError, match=r"^task\.principles: words has its own checker"):
        make_task("words", [{"name": "brevity"}])
