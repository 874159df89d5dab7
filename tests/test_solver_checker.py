"""Solver + checker (selfplay/tasks/solver_checker.py): the two roles' prompts and targets,
the consensus, each role's reward on hand-worked groups run in the real sandbox, the
selection figures, and the path from generator to learner rows on a scripted engine."""

from __future__ import annotations

import itertools
import random

import pytest

from actors.buffer import ReplayBuffer
from actors.generator import Generator
from actors.verifier import Verifier
from selfplay import schema
from selfplay.builder import sft_examples
from selfplay.config import BufferConfig, BuilderConfig, ConfigError, GeneratorConfig, TaskConfig, load_config
from selfplay.evals import selection_summary
from selfplay.tasks import make_task
from selfplay.tasks.codegen import apply, canonical
from selfplay.tasks.solver_checker import CHECKER, SOLVER, at, consensus, parse_test
from tests.engines import EngineMaker, RuleEngine, decode

TASK = make_task("solver_checker", steps=2)
DOUBLE = TASK._make(["double"])  # f(x) = 2x


@pytest.mark.parametrize(
    "reply, parsed",
    [
        ("f(3)==6", (3, "6")),
        (" f(-9)==-18\n", (-9, "-18")),
        ("f(4)==(4+3)*2", (4, "(4 + 3) * 2")),  # the expected value as arithmetic on literals
        ("f(-4)==(-4)**2%7", (-4, "(-4) ** 2 % 7")),
        ("f(2)==-(-2)", (2, "--2")),  # as ast.unparse writes it
        ("f(10)==20", None),  # x is one digit
        ("f(3) == 6", None),  # exactly the form, no spaces around ==
        ("f(3)==6 or True", None),
        ("f(3)==f(3)", None),  # no calls: a test must state a value
        ("f(3)==x*2", None),  # no names
        ("f(3)==__import__('os')", None),
        ("f(3)==9**9**9", None),  # a literal exponent only
        ("f(3)==((9**4)**4)**4", None),  # 9**64 has 62 digits: over MAX_DIGITS
        ("f(3)==(9**4)**4", (3, "(9 ** 4) ** 4")),  # 16 digits
        ("f(3)==" + "*".join(["99999"] * 9), None),  # 45 digits
        ("f(3)==2**5", None),  # exponents up to 4
        ("f(3)==2**4", (3, "2 ** 4")),
        ("f(3)==2**'a'", None),  # a literal of another type is refused, never compared
        ("f(3)==2**None", None),
        ("f(3)==2**1j", None),
        ("f(3)==2**...", None),
        ("f(3)==2**x", None),
        ("f(3)==6.0", None),  # integers only
        ("f(3)==True", None),
        ("f(3)==6//1", None),  # + - * % ** only
        ("f(٣)==6", None),  # ASCII digits only
        ("f(3)==6\nimport os", None),
        ("assert f(3)==6", None),
        ("f(3)==" + "1+" * 40 + "1", None),  # longer than the limit
        ("", None),
    ],
)
def test_a_checker_reply_is_parsed_or_refused(reply, parsed):
    assert parse_test(reply) == parsed


def holds(problem, test: str) -> bool:
    """Whether a test holds for the spec, worked out here from the spec's meaning (the test's
    expected value is arithmetic on literals: our own targets, evaluated without builtins)."""
    x, expected = parse_test(test)
    y = x
    for op in problem.id.split(":", 1)[1].split(" then "):
        y = apply(op, y)
    return y == eval(expected, {"__builtins__": {}})


def test_the_roles_prompts_differ_in_their_role_letter_and_their_targets_are_correct():
    rng = random.Random(0)
    for seed in range(200):
        problem = TASK.problem(seed)
        solver, checker = TASK.role_prompt(problem, SOLVER), TASK.role_prompt(problem, CHECKER)
        assert solver == problem.prompt and solver.startswith("f: ") and checker == "t: " + solver[3:]
        assert TASK.role_target(problem, SOLVER, rng) == problem.target
        assert holds(problem, TASK.role_target(problem, CHECKER, rng))


def test_every_correct_reply_of_either_role_fits_the_reply_limit():
    longest = max(len(f"f({x})=={at(canonical(ops), x)}") for ops in TASK.specs() for x in range(-9, 10))
    assert longest <= TASK.max_reply_chars <= longest + 4
    assert TASK.max_reply_chars > make_task("codegen", steps=2).max_reply_chars


@pytest.mark.parametrize(
    "passes, counts, expected",
    [
        ([(True, True, False), (True, False, True)], [3, 1], (True, True, False)),  # 3x2 beats 1x2
        ([(True, False, False), (True, True, True)], [2, 1], (True, True, True)),  # 2x1 < 1x3
        ([(True, False), (False, True)], [1, 2], (False, True)),  # 1x1 < 2x1
        ([(True, True), (True, False)], [1, 2], (True, False)),  # 1x2 = 2x1: more samples win the tie
        ([(True, True), (True, True)], [1, 1], (True, True)),  # one vector, its samples summed
        # ... so 1+1 samples of one vector beat 1 of another that passes as many tests
        ([(True, False), (True, True), (True, False)], [1, 1, 1], (True, False)),
        ([(False, False)], [5], None),  # passes nothing: no consensus
        ([], [], None),
    ],
)
def test_the_consensus_is_the_cluster_with_most_samples_times_tests_passed(passes, counts, expected):
    assert consensus(passes, counts) == expected


def test_a_group_is_scored_by_the_consensus_of_its_own_tests():
    replies = [
        (SOLVER, "x*2"),
        (SOLVER, "x*2"),
        (SOLVER, "x+x"),  # right, written otherwise: its own solution, the same pass set
        (SOLVER, "x+2"),  # wrong; agrees with 2x only at x = 2
        (SOLVER, "(("),  # malformed: never run
        (CHECKER, "f(2)==4"),  # true, but every solution passes it: tells none apart
        (CHECKER, "f(3)==6"),  # true, and x+2 fails it
        (CHECKER, "f(3)==5"),  # false: only x+2 passes it
        (CHECKER, "f(1)==7"),  # false: nothing passes it
        (CHECKER, "f(2) == 4"),  # malformed
    ]
    # tests (2,4) (3,6) (3,5) (1,7): x*2 and x+x pass TTFF (3 samples x 2 = 6), x+2 TFTF (1 x 2):
    # TTFF is the consensus and (2,4), (3,6) are the agreed tests
    scores = TASK.score_group(DOUBLE, replies)
    assert [s.total for s in scores] == [1.0, 1.0, 1.0, 0.5, 0.0, 0.0, 1.0, 0.0, 0.0, 0.0]
    assert [s.parts["all_pass"] for s in scores[:5]] == [1.0, 1.0, 1.0, 0.0, 0.0]  # hidden tests
    assert [s.parts["correct"] for s in scores[5:]] == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert [s.parts["agreed"] for s in scores[5:]] == [1.0, 1.0, 0.0, 0.0, 0.0]
    assert [s.valid for s in scores] == [True] * 4 + [False] + [True] * 4 + [False]
    assert scores[4].reason == scores[9].reason == "format"


def test_a_wrong_majority_with_its_matching_wrong_test_wins_the_consensus():
    """The signal is the group's own: the hidden tests never reach a reward."""
    replies = [(SOLVER, "x+2")] * 3 + [(SOLVER, "x*2"), (CHECKER, "f(3)==5"), (CHECKER, "f(3)==6")]
    scores = TASK.score_group(DOUBLE, replies)
    assert [s.total for s in scores] == [1.0, 1.0, 1.0, 0.0, 1.0, 0.0]
    assert scores[3].parts["all_pass"] == 1.0 and scores[5].parts["correct"] == 1.0


def test_without_a_test_anyone_passes_no_reply_earns_anything():
    scores = TASK.score_group(
        DOUBLE, [(SOLVER, "x*2"), (SOLVER, "x+1"), (CHECKER, "f(1)==9"), (CHECKER, "f")]
    )
    assert [s.total for s in scores] == [0.0, 0.0, 0.0, 0.0]


def test_selection_picks_by_own_tests_and_averages_a_tie():
    solutions = ["x*2", "x+2", "x+2", "x"]  # hidden: right, wrong, wrong, wrong
    # f(3)==6 is passed by x*2 only; f(2)==4 by x*2 and x+2; f(0)==0 by x*2 and x
    picked = TASK.select(DOUBLE, solutions, ["f(3)==6", "f(2)==4", "f(0)==0", "nonsense"])
    assert picked["hidden"] == [1.0, 0.0, 0.0, 0.0]
    assert (picked["selected_pass"], picked["random_pass"]) == (1.0, 0.25)
    assert picked["consensus_pass"] == 1.0  # x*2: 1 sample x 3 tests; x+2: 2 x 1; x: 1 x 1
    assert (picked["test_accuracy"], picked["test_valid"]) == (0.75, 0.75)
    tied = TASK.select(DOUBLE, solutions, ["f(2)==4", "f(2)==4"])  # x*2 and both x+2 pass it
    assert tied["selected_pass"] == tied["consensus_pass"] == pytest.approx(1 / 3)
    # a wrong test (f(3)==5) lets the lone x+2 pass most tests; CodeT's dual agreement weighs
    # the 3 samples of x*2 (3 x 1 test) over it (1 x 2 tests)
    crowd = TASK.select(DOUBLE, ["x*2", "x*2", "x*2", "x+2"], ["f(3)==5", "f(2)==4"])
    assert (crowd["selected_pass"], crowd["consensus_pass"], crowd["random_pass"]) == (0.0, 1.0, 0.75)
    # nothing passed (a malformed solution passes nothing): a uniform pick, format included
    none = TASK.select(DOUBLE, ["((", "x*2"], ["f(1)==9"])
    assert none["selected_pass"] == none["consensus_pass"] == none["random_pass"] == 0.5


def test_selection_summary_means_the_figures_and_bounds_the_gain():
    picks = [
        {
            "selected_pass": 1.0,
            "consensus_pass": 0.5,
            "random_pass": 0.25,
            "test_accuracy": 1.0,
            "test_valid": 1.0,
        },
        {
            "selected_pass": 0.5,
            "consensus_pass": 1.0,
            "random_pass": 0.5,
            "test_accuracy": 0.5,
            "test_valid": 1.0,
        },
    ]
    out = selection_summary(picks)
    assert out["selected_pass"] == 0.75 and out["random_pass"] == 0.375 and out["test_accuracy"] == 0.75
    assert out["selection_gain"] == 0.375
    assert out["consensus_pass"] == 0.75 and out["consensus_gain"] == 0.375  # gains 0.25 and 0.5
    assert out["consensus_gain_lo"] == pytest.approx(0.375 - 1.96 * 0.1768 / 2**0.5, abs=1e-3)
    # gains 0.75 and 0: s = 0.5303, half-width 1.96 * s / sqrt(2) = 0.735
    assert out["selection_gain_lo"] == pytest.approx(0.375 - 0.735, abs=1e-3)
    assert out["selection_gain_hi"] == pytest.approx(0.375 + 0.735, abs=1e-3)
    assert "selection_gain_lo" not in selection_summary(picks[:1])


def test_the_supervised_set_holds_each_problem_in_both_roles():
    table = sft_examples(TASK, lambda text, special: [ord(c) for c in text], 0, 20, seed=3, run_id="r")
    rows = table.to_pylist()
    assert len(rows) == 40 and len({r["reference_id"] for r in rows}) == 20
    for solver, checker in zip(rows[::2], rows[1::2]):
        assert (solver["role"], checker["role"]) == (SOLVER, CHECKER)
        assert solver["reference_id"] == checker["reference_id"]
        problem = TASK.problem(solver["seed"])
        assert solver["response_text"] == problem.target
        assert holds(problem, checker["response_text"])


# ---- The path: generator -> verifier -> builder, on a scripted engine ------------------
def scripted(prompt: str, wrong_every: int, calls) -> str:
    """A solver right except every `wrong_every`-th call; a checker writing a true test at
    x = 1 or x = 2 in turn."""
    right = canonical(prompt[3:].strip().split(" then "))
    n = next(calls)
    if prompt.startswith("f: "):
        return right if n % wrong_every else right + "+1"
    return f"f({1 + n % 2})=={at(right, 1 + n % 2)}"


def solver_checker_generator(k: int = 4, held_out: int = 6) -> Generator:
    calls = itertools.count(1)
    return Generator(
        "gen-0",
        "run-0",
        {"tictactoe": 1.0},
        RuleEngine(rule=lambda p: scripted(p, 4, calls)),
        EngineMaker(),
        GeneratorConfig(max_response_tokens=40),
        seed=0,
        task_cfg=TaskConfig(
            name="solver_checker",
            params={"steps": 2},
            samples_per_prompt=k,
            held_out=held_out,
            eval_samples=k,
        ),
    )


def test_both_roles_flow_to_rows_with_advantages_per_role():
    gen = solver_checker_generator(k=4)
    table = gen.task_play(2)
    rows = table.to_pylist()
    assert len(rows) == 16 and len(gen.engines["learner"].calls) == 1  # 2 problems x 2 roles x 4
    assert [r["role"] for r in rows[:8]] == [SOLVER] * 4 + [CHECKER] * 4
    assert len({r["group_id"] for r in rows[:8]}) == 1
    verifier = Verifier(decode, task=TASK)
    scored = verifier.training_turns(table).to_pylist()
    assert len(scored) == 16 and not verifier.rejected
    for r in scored:
        problem = TASK.problem(r["seed"])
        if r["role"] == SOLVER:  # one wrong in every 4: the 3 right ones are the consensus
            right = r["response_text"] == problem.target
            assert r["scores"] and dict(r["scores"])["all_pass"] == float(right)
            assert r["reward"] == 1.0 or not right
    buf = ReplayBuffer(BufferConfig(min_size=1), builder=BuilderConfig(rows="rl", group_advantage="drgrpo"))
    assert buf.add(schema.from_rows(scored)) == 16
    batch = buf.sample(16, learner_version=0).to_pylist()
    for role in (SOLVER, CHECKER):  # each role's advantages are centred on its own samples
        for group in {r["group_id"] for r in batch}:
            advantages = [r["advantage"] for r in batch if r["role"] == role and r["group_id"] == group]
            assert len(advantages) == 4 and sum(advantages) == pytest.approx(0.0, abs=1e-6)


def test_a_checker_reply_under_the_solvers_prompt_is_rejected():
    rows = solver_checker_generator(k=1).task_play(1).to_pylist()
    rows[1]["role"] = SOLVER  # the checker's row claims the other role
    verifier = Verifier(decode, task=TASK)
    assert verifier.verify(schema.from_rows(rows)).num_rows == 1
    assert verifier.rejected == {"prompt_mismatch": 1}
    rows[1]["role"] = 2
    verifier = Verifier(decode, task=TASK)
    verifier.verify(schema.from_rows(rows))
    assert verifier.rejected == {"unknown_role": 1}


def test_the_held_out_evaluation_adds_the_selection_figures():
    gen = solver_checker_generator(k=4, held_out=6)
    result = gen.evaluate_task()
    # greedy (6 calls: 1 in 4 wrong), then each problem's 4 solutions and 4 tests; every test
    # is true, so the right solutions pass all and the wrong ones fewer: picked right
    assert result["selected_pass"] == 1.0 and result["test_accuracy"] == 1.0
    assert result["random_pass"] < 1.0 and result["selection_gain"] == pytest.approx(
        1.0 - result["random_pass"]
    )
    assert result["sample_accuracy"] == result["random_pass"] and result["problems"] == 6
    prompts = gen.engines["learner"].calls[1]["prompts"]
    assert len(prompts) == 6 * 8 and prompts[0].startswith("f: ") and prompts[4].startswith("t: ")


def test_a_solver_checker_run_accepts_only_its_figures():
    cfg = load_config("configs/solver_checker.yaml", [])
    assert cfg.task.name == "solver_checker"
    with pytest.raises(ConfigError, match="acceptance.solver_checker/held_out/selection_win"):
        load_config(
            "configs/solver_checker.yaml", ["acceptance={solver_checker/held_out/selection_win: '>= 1'}"]
        )


def test_a_solution_that_could_not_run_says_nothing_about_the_tests():
    hog = "[0]*10**10"  # well formed; exhausts the sandbox's memory: it passes nothing
    scores = TASK.score_group(DOUBLE, [(SOLVER, "x*2"), (SOLVER, "x*2"), (SOLVER, hog), (CHECKER, "f(3)==6")])
    assert scores[2].total == 0.0 and scores[2].reason == "memory" and scores[2].valid
    assert scores[3].total == 0.0  # the only solutions that ran all pass it: it tells none apart


def test_a_solution_is_held_to_codegens_reply_limit_not_the_checkers():
    limit = make_task("codegen", steps=2).max_reply_chars
    assert TASK.max_reply_chars > limit
    reply = "x" + "+0" * ((limit - 1) // 2)  # padded with spaces to exact lengths
    assert TASK.solution(reply + " " * (limit - len(reply))) is not None  # at the limit
    assert TASK.solution(reply + " " * (limit + 1 - len(reply))) is None  # one character over


def test_frozen_roles_are_some_of_the_tasks_roles_by_name():
    cfg = load_config("configs/solver_checker.yaml", ["builder.frozen_roles=[solver]"])
    assert cfg.builder.frozen_roles == ["solver"]
    unanchored = ["builder.anchored_roles=[]", "learner.anchor_coef=0"]  # refine's shipped anchor
    assert load_config(
        "configs/refine.yaml", [*unanchored, "builder.frozen_roles=[answer, refiner]"]
    ).builder.frozen_roles
    for bad in ("[solver, checker]", "[judge]"):  # every role, or none of the task's
        with pytest.raises(ConfigError, match="builder.frozen_roles"):
            load_config("configs/solver_checker.yaml", [f"builder.frozen_roles={bad}"])
    with pytest.raises(ConfigError, match="builder.frozen_roles"):  # a one-role task's only role
        load_config("configs/rft.yaml", ["builder.frozen_roles=[arithmetic]"])
