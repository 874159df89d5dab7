"""Generate -> critique -> refine (selfplay/tasks/refine.py): the roles' prompts, each role's
reward on hand-worked chains, the supervised set, the held-out figures, and the path from
generator to learner rows (one trajectory per chain) on a scripted engine."""

from __future__ import annotations

import itertools
import random

import pytest

from actors.buffer import ReplayBuffer
from actors.generator import Generator
from actors.verifier import Verifier
from selfplay import schema
from selfplay.builder import build, sft_examples
from selfplay.config import BufferConfig, BuilderConfig, ConfigError, GeneratorConfig, TaskConfig, load_config
from selfplay.tasks import make_task
from selfplay.tasks.refine import (
    ANSWER,
    CRITIC,
    REFINER,
    chain_summary,
    compared_verdict,
    near_miss,
    verdict,
    worked_verdict,
)
from tests.engines import EngineMaker, RuleEngine, decode, encode

TASK = make_task("refine", digits=2, terms=2)
SUM = TASK._make([12, 34], ["+"])  # 12+34= -> 46


def test_each_role_prompt_holds_the_replies_before_it():
    assert TASK.role_prompt(SUM, ANSWER, []) == "12+34="
    assert TASK.role_prompt(SUM, CRITIC, ["47"]) == "c: 12+34=47\n"
    assert TASK.role_prompt(SUM, REFINER, ["47", "no"]) == "r: 12+34=47 no\n"
    # a reply is shown on one line, whole: a prompt keeps its shape and shows what is scored
    assert TASK.role_prompt(SUM, REFINER, [" 47\n", "no \n"]) == "r: 12+34=47 no\n"
    assert TASK.role_prompt(SUM, REFINER, [" 46\n7", "ok"]) == "r: 12+34=46 7 ok\n"
    # "46\n7" is malformed: a critic shown "46" alone trusted it and lost, and a refiner
    # that copied the right 46 was paid for a fix
    assert [s.total for s in TASK.score_chain(SUM, ["46\n7", "no", "46"])] == [0.0, 1.0, 1.0]
    assert TASK.role_prompt(SUM, CRITIC, ["46\n7"]) == "c: 12+34=46 7\n"


@pytest.mark.parametrize(
    "chain, rewards, flip",
    [
        (["46", "ok", "46"], [1.0, 1.0, 0.0], 0.0),  # right, trusted, kept
        (["46", "no", "47"], [1.0, 0.0, -1.0], 1.0),  # right, doubted, broken
        (["47", "no", "46"], [0.0, 1.0, 1.0], 0.0),  # wrong, caught, fixed
        (["47", "ok", "47"], [0.0, 0.0, 0.0], 0.0),  # wrong, missed, kept
        (["47", "no", "45"], [0.0, 1.0, 0.0], 0.0),  # wrong, caught, still wrong
        (["46", "ok", "x"], [1.0, 1.0, -1.0], 1.0),  # a malformed refinement is wrong
        (["47", "maybe", "45"], [0.0, 0.0, 0.0], 0.0),  # a malformed verdict: not a "no" (not flagged)
    ],
)
def test_each_role_is_rewarded_by_the_checker(chain, rewards, flip):
    scores = TASK.score_chain(SUM, chain)
    assert [s.total for s in scores] == rewards
    assert scores[REFINER].parts["flip_to_wrong"] == flip
    assert scores[REFINER].parts["flagged"] == float(chain[1] == "no")
    assert scores[CRITIC].parts["first"] == scores[REFINER].parts["first"] == float(chain[0] == "46")


@pytest.mark.parametrize(
    "chain, refiner",
    [
        (["46", "ok", "46"], 1.0),  # right, kept: 0 + 1 x 1
        (["46", "no", "47"], -1.0),  # right, broken: -1 + 0
        (["47", "no", "46"], 2.0),  # wrong, fixed: 1 + 1 x 1
        (["47", "ok", "47"], 0.0),  # wrong, kept: 0 + 0, below a right answer kept
    ],
)
def test_the_refined_weight_adds_the_refined_answers_own_score(chain, refiner):
    task = make_task("refine", digits=2, terms=2, refined_weight=1.0)
    scores = task.score_chain(SUM, chain)
    assert scores[REFINER].total == refiner
    assert [s.total for s in scores[:REFINER]] == [s.total for s in TASK.score_chain(SUM, chain)[:REFINER]]


@pytest.mark.parametrize("key", ["refined_weight", "working_weight"])
@pytest.mark.parametrize("weight", [-0.5, float("nan"), float("inf")])
def test_a_negative_or_infinite_weight_is_refused_naming_the_parameter(key, weight):
    working = {"critic_working": True} if key == "working_weight" else {}  # refined_weight on its own
    with pytest.raises(ValueError, match=f"task.params.{key}"):
        make_task("refine", **working, **{key: weight})


# ---- A critic that works the sum out before its verdict (critic_working) ---------------
WORKING = make_task("refine", digits=2, terms=2, critic_working=True, working_weight=0.5)


def test_a_critique_with_working_is_a_sum_then_a_verdict():
    assert worked_verdict("46 no") == ("46", False)
    assert worked_verdict(" 046  ok\n") == ("46", True)  # the sum normalised, as the checker reads it
    for reply in ("no", "46", "46 maybe", "46 no no", "4 6 ok", "x no", "no 46", "", None):
        assert worked_verdict(reply) == (None, None)


@pytest.mark.parametrize(
    "chain, critic, working",
    [
        (["46", "46 ok", "46"], 1.5, 1.0),  # right answer, right sum, trusted: agree + 0.5
        (["47", "46 no", "46"], 1.5, 1.0),  # wrong answer caught by the right sum
        (["47", "47 ok", "47"], 0.0, 0.0),  # the wrong answer worked out again and trusted
        (["46", "45 no", "45"], 0.0, 0.0),  # a wrong sum doubts a right answer
        (["47", "45 no", "45"], 1.0, 0.0),  # caught, with a wrong sum: agreement alone
        (["46", "046 ok", "46"], 1.5, 1.0),  # the sum read as the checker reads an answer
    ],
)
def test_the_critic_with_working_is_paid_for_agreeing_and_for_its_sum(chain, critic, working):
    scores = WORKING.score_chain(SUM, chain)
    assert scores[CRITIC].total == critic and scores[CRITIC].parts["working"] == working
    assert scores[CRITIC].parts["agree"] == float(verdict(chain[1].split()[1]) == (chain[0] == "46"))
    assert scores[REFINER].parts["flagged"] == float(chain[1].endswith("no"))
    # the refiner is shown the whole critique, so it can take the critic's sum
    assert WORKING.role_prompt(SUM, REFINER, chain[:2]) == f"r: 12+34={chain[0]} {chain[1]}\n"
    # at working_weight 0 the critic is paid for its agreement alone
    plain = make_task("refine", digits=2, terms=2, critic_working=True).score_chain(SUM, chain)
    assert plain[CRITIC].total == scores[CRITIC].parts["agree"]
    # with working_improvement the sum is paid as the refiner is: right(sum) - right(v0)
    improving = make_task(
        "refine", digits=2, terms=2, critic_working=True, working_weight=0.5, working_improvement=True
    )
    shaped = 0.5 * (working - float(chain[0] == "46"))
    assert improving.score_chain(SUM, chain)[CRITIC].total == scores[CRITIC].parts["agree"] + shaped


def test_a_malformed_critique_never_out_earns_a_well_formed_one():
    improving = make_task(
        "refine", digits=2, terms=2, critic_working=True, working_weight=1.0, working_improvement=True
    )
    for first in ("46", "47"):  # right, wrong
        well_formed = [
            improving.score_chain(SUM, [first, f"{work} {says}", "46"])[CRITIC]
            for work in ("45", "46", "47")
            for says in ("ok", "no")
        ]
        malformed = improving.score_chain(SUM, [first, "46 maybe", "46"])[CRITIC]
        assert malformed.total <= min(s.total for s in well_formed) and not malformed.valid
        # it is paid as a wrong sum with no agreement: 1 x (0 - right(v0))
        assert malformed.total == -float(first == "46") and malformed.reason == "format"


def test_a_critique_without_its_working_or_verdict_is_malformed():
    for critique in ("no", "46", "46 maybe"):
        scores = WORKING.score_chain(SUM, ["47", critique, "46"])
        assert (
            scores[CRITIC].total == 0.0
            and not scores[CRITIC].valid
            and scores[CRITIC].parts["working"] == 0.0
        )
        assert scores[REFINER].parts["flagged"] == 0.0 and scores[REFINER].total == 1.0
    # and a bare "ok" is a plain critic's verdict, not a critic with working's
    assert WORKING.score_chain(SUM, ["46", "ok", "46"])[CRITIC].valid is False


def test_a_reversed_sum_is_read_backwards_and_taught_backwards():
    assert worked_verdict("64 no", reversed_=True) == ("46", False)
    assert worked_verdict("64- ok", reversed_=True) == ("-46", True)  # the sign last
    assert worked_verdict("05 ok", reversed_=True) == ("50", True)  # the units' 0 first
    assert worked_verdict("-64 no", reversed_=True) == (None, None)  # "46-" read forwards: no integer
    task = make_task("refine", digits=2, terms=2, critic_working=True, working_reversed=True)
    assert [s.total for s in task.score_chain(SUM, ["47", "64 no", "46"])] == [0.0, 1.0, 1.0]
    assert task.score_chain(SUM, ["47", "64 no", "46"])[CRITIC].parts["working"] == 1.0
    assert task.score_chain(SUM, ["46", "46 ok", "46"])[CRITIC].parts["working"] == 0.0  # 64 forwards
    minus = make_task("refine", digits=2, terms=2, subtract=1.0, critic_working=True, working_reversed=True)
    problem = minus._make([12, 34], ["-"])  # 12-34= -> -22
    critics = [t for role, _, t in minus.labelled(problem, random.Random(0)) if role == CRITIC]
    assert critics == ["22- ok", "22- no"]
    with pytest.raises(ValueError, match="task.params.working_reversed: .* set critic_working true"):
        make_task("refine", working_reversed=True)


COMPARED = make_task(
    "refine", digits=2, terms=2, critic_working=True, working_weight=1.0, verdict_compared=True
)


def test_a_compared_verdict_is_drawn_from_the_critics_sum_and_the_answer_as_the_checker_reads_it():
    assert compared_verdict("46", "47") == ("46", False)
    assert compared_verdict(" 046\n", "46") == ("46", True)  # both normalised
    assert compared_verdict("46", "1;46") == ("46", True)  # the answer's final part, as scored
    assert compared_verdict("46", "4 6") == ("46", False)  # a malformed answer equals no sum
    assert compared_verdict("64", "46", reversed_=True) == ("46", True)
    assert compared_verdict("64-", "-46", reversed_=True) == ("-46", True)  # the sign last
    for reply in ("46 ok", "46 no", "no", "x", "4 6", "", None):  # its sum alone, nothing more
        assert compared_verdict(reply, "46") == (None, None)


@pytest.mark.parametrize(
    "chain, critic, agree, shown",
    [
        (["46", "46", "46"], 2.0, 1.0, "46 ok"),  # a right sum passes a right answer
        (["47", "46", "46"], 2.0, 1.0, "46 no"),  # ... and flags a wrong one
        (["47", "47", "47"], 0.0, 0.0, "47 ok"),  # the wrong answer copied: passed
        (["46", "45", "45"], 0.0, 0.0, "45 no"),  # a wrong sum doubts a right answer
        (["47", "45", "45"], 1.0, 1.0, "45 no"),  # caught by a wrong sum: agreement alone
        (["47", "46 no", "46"], 0.0, 0.0, "46 no ?"),  # a verdict of its own: malformed, none drawn
    ],
)
def test_with_a_compared_verdict_the_critic_writes_its_sum_and_the_task_draws_the_verdict(
    chain, critic, agree, shown
):
    scores = COMPARED.score_chain(SUM, chain)
    assert scores[CRITIC].total == critic and scores[CRITIC].parts["agree"] == agree
    assert scores[CRITIC].valid == (len(chain[1].split()) == 1)
    assert scores[REFINER].parts["flagged"] == float(shown.endswith("no") and scores[CRITIC].valid)
    # the refiner is shown the critic's sum and the verdict drawn from it (or "?": none drawn)
    assert COMPARED.role_prompt(SUM, REFINER, chain[:2]) == f"r: 12+34={chain[0]} {shown}\n"


def test_with_a_compared_verdict_the_critic_is_taught_its_sum_and_the_refiner_shown_a_drawn_verdict():
    critics = [(p, t) for role, p, t in COMPARED.labelled(SUM, random.Random(0)) if role == CRITIC]
    assert [t for _, t in critics] == ["46", "46"]
    refiners = [p for role, p, _ in COMPARED.labelled(SUM, random.Random(0)) if role == REFINER]
    assert refiners[0] == "r: 12+34=46 46 ok\n" and refiners[1].endswith(" 46 no\n")
    assert COMPARED.max_reply_chars == TASK.max_reply_chars
    backwards = make_task(
        "refine", digits=2, terms=2, critic_working=True, working_reversed=True, verdict_compared=True
    )
    assert [t for role, _, t in backwards.labelled(SUM, random.Random(0)) if role == CRITIC] == ["64", "64"]
    assert backwards.role_prompt(SUM, REFINER, ["47", "64"]) == "r: 12+34=47 64 no\n"
    with pytest.raises(ValueError, match="task.params.verdict_compared: .* set critic_working true"):
        make_task("refine", verdict_compared=True)
    # whatever the critic writes, the refiner's prompt ends in a verdict the task drew, or "?"
    for critique in ("46", "47", "46 no", "46 ok", "ok", "no", "x", ""):
        shown = COMPARED.role_prompt(SUM, REFINER, ["47", critique])
        drawn = compared_verdict(critique, "47")[1]
        assert shown.endswith({True: " ok\n", False: " no\n", None: " ?\n"}[drawn])


def test_the_working_weight_needs_the_working_and_the_reply_limit_holds_a_critique():
    with pytest.raises(ValueError, match="task.params.working_weight: .* set critic_working true"):
        make_task("refine", working_weight=0.5)
    with pytest.raises(ValueError, match="task.params.working_improvement: .* set it"):
        make_task("refine", critic_working=True, working_improvement=True)
    assert WORKING.max_reply_chars == TASK.max_reply_chars + 3
    rng = random.Random(0)
    for seed in range(200):
        for _, _, target in WORKING.labelled(WORKING.problem(seed), rng):
            assert len(target) <= WORKING.max_reply_chars - 2  # Arithmetic's 2 characters of slack kept
    assert len("198 no") <= WORKING.max_reply_chars - 2  # the largest sum of two 2-digit numbers
    # with subtraction the longest critique carries a sign, forwards or backwards
    for reversed_, longest in ((False, "-99 no"), (True, "99- no")):  # 0-99: the most negative
        minus = make_task(
            "refine", digits=2, terms=2, subtract=1.0, critic_working=True, working_reversed=reversed_
        )
        assert len(longest) <= minus.max_reply_chars - 2 and worked_verdict(longest, reversed_) == (
            "-99",
            False,
        )
    # a generator whose replies cannot hold the longest critique and its end is refused
    load_config("configs/refine.yaml", ["task.params.digits=3"])  # "8991 no": the shipped critic's
    with pytest.raises(ConfigError, match="generator.max_response_tokens: .* needs 9 tokens"):
        load_config("configs/refine.yaml", ["task.params.digits=4"])
    # and the critic's sums are an acceptance figure only where it writes them
    figure = ["acceptance={refine/held_out/critic_working: '>= 0.9'}"]
    load_config("configs/refine.yaml", figure)  # the shipped critic writes its sum
    with pytest.raises(ConfigError, match="acceptance.refine/held_out/critic_working"):
        load_config("configs/refine.yaml", ["task.params={digits: 2, terms: 2}", *figure])


def test_the_held_out_summary_reads_agreement_not_the_critics_reward():
    chains = [
        WORKING.score_chain(SUM, c)
        for c in (["46", "46 ok", "46"], ["47", "45 no", "45"], ["47", "47 ok", "47"])
    ]
    summary = chain_summary(chains)
    assert summary["critic_agreement"] == pytest.approx(2 / 3)  # not the rewards' mean, (1.5 + 1 + 0) / 3
    assert summary["critic_passes_right"] == 1.0 and summary["critic_flags_wrong"] == pytest.approx(1 / 2)
    assert summary["critic_working"] == pytest.approx(1 / 3)
    assert "critic_working" not in chain_summary([TASK.score_chain(SUM, ["46", "ok", "46"])])


def test_a_critique_that_is_no_verdict_is_malformed_and_earns_nothing():
    assert verdict(" ok\n") is True and verdict("no") is False
    for reply in ("", "okay", "yes", "o k", None):
        assert verdict(reply) is None
    scores = TASK.score_chain(SUM, ["47", "maybe", "46"])
    assert scores[CRITIC].total == 0.0 and not scores[CRITIC].valid
    assert scores[REFINER].total == 1.0  # the refiner is judged on its own answer


def one_digit_apart(a: str, b: str) -> bool:
    """Same sign, and the digits (zero-padded to one length) differ in one place."""
    width = max(len(a), len(b))
    x, y = a.lstrip("-").zfill(width), b.lstrip("-").zfill(width)
    return a.startswith("-") == b.startswith("-") and sum(p != q for p, q in zip(x, y)) == 1


def test_a_scratchpad_is_refused_naming_the_parameter():
    with pytest.raises(ValueError, match="task.params.scratchpad"):
        make_task("refine", scratchpad=True)


def test_a_near_miss_is_wrong_and_close():
    rng = random.Random(0)
    for answer in ("0", "5", "46", "-105", "1999"):
        misses = {near_miss(answer, rng) for _ in range(200)}
        assert answer not in misses and all(TASK.score("", m, answer).total == 0 for m in misses)
        assert all(abs(int(m) - int(answer)) in (1, 10) or one_digit_apart(m, answer) for m in misses)
        assert len(misses) > 3


@pytest.mark.parametrize("task", [TASK, WORKING], ids=["verdict", "working"])
def test_the_supervised_set_teaches_every_role_on_a_right_and_a_wrong_answer(task):
    table = sft_examples(task, lambda text, special: [ord(c) for c in text], 0, 20, seed=3, run_id="r")
    rows = table.to_pylist()
    assert len(rows) == 20 * 5 and len({r["reference_id"] for r in rows}) == 20
    for chain in (rows[i : i + 5] for i in range(0, len(rows), 5)):
        problem = task.problem(chain[0]["seed"])
        # a critic with working writes the right sum before either verdict
        work = f"{problem.reference} " if task is WORKING else ""
        assert [r["role"] for r in chain] == [ANSWER, CRITIC, REFINER, CRITIC, REFINER]
        assert [r["response_text"] for r in chain] == [
            problem.reference,
            work + "ok",
            problem.reference,
            work + "no",
            problem.reference,
        ]
        prompts = [decode(r["prompt_ids"]) for r in chain]  # the test's encoding has no bos
        shown = [p.split("=")[1].split()[0] for p in prompts[1:]]
        assert shown[0] == shown[1] == problem.reference  # after the right answer
        assert shown[2] == shown[3] != problem.reference  # after a near miss
        assert prompts[4].endswith(f" {work}no\n") and prompts[2].endswith(f" {work}ok\n")


def test_the_held_out_summary_pairs_first_and_refined_answers():
    chains = [
        TASK.score_chain(SUM, c)
        for c in (
            ["46", "ok", "46"],
            ["47", "no", "46"],
            ["47", "no", "45"],
            ["46", "no", "47"],
            ["47", "ok", "47"],
        )
    ]
    summary = chain_summary(chains)
    assert summary["first_accuracy"] == pytest.approx(2 / 5)
    assert summary["refined_accuracy"] == pytest.approx(2 / 5)  # one fixed, one broken
    assert summary["refine_gain"] == pytest.approx(0.0)
    assert summary["refine_gain_lo"] < 0 < summary["refine_gain_hi"]
    assert summary["critic_agreement"] == pytest.approx(3 / 5)
    assert summary["critic_flags_wrong"] == pytest.approx(2 / 3)  # of the three wrong first answers
    assert summary["critic_passes_right"] == pytest.approx(1 / 2)  # of the two right ones
    assert summary["flips_to_wrong"] == summary["flips_to_right"] == pytest.approx(1 / 5)
    assert summary["critic_valid"] == 1.0


# ---- The path: generator -> verifier -> builder, on a scripted engine ------------------
def scripted(prompt: str, calls, working: bool | str = False) -> str:
    """An answerer wrong on every other call (one too many), a critic that says "no" to
    every answer, a refiner that takes one off a doubted answer. With `working`, a critic
    that works the sum out and compares, and a refiner that writes the critic's sum; with
    "compared", a critic that writes the sum alone (the task draws the verdict)."""
    n = next(calls)
    problem, _, shown = prompt.removeprefix("c: ").removeprefix("r: ").partition("=")
    right = str(sum(int(x) for x in problem.split("+")))  # the task draws sums only
    if prompt.startswith("c: "):
        if working == "compared":
            return right
        return f"{right} {'ok' if shown.strip() == right else 'no'}" if working else "no"
    if prompt.startswith("r: "):
        return shown.split()[1] if working else str(int(shown.split()[0]) - 1)
    return right if n % 2 else str(int(right) + 1)


def refine_generator(k: int = 4, held_out: int = 6, working: bool | str = False) -> Generator:
    calls = itertools.count(1)
    return Generator(
        "gen-0",
        "run-0",
        {"tictactoe": 1.0},
        RuleEngine(rule=lambda p: scripted(p, calls, working)),
        EngineMaker(),
        GeneratorConfig(max_response_tokens=8),
        seed=0,
        task_cfg=TaskConfig(
            name="refine",
            params={"digits": 2, "terms": 2}
            | ({"critic_working": True, "working_weight": 0.5} if working else {})
            | ({"verdict_compared": True} if working == "compared" else {}),
            samples_per_prompt=k,
            held_out=held_out,
            eval_samples=k,
        ),
    )


def test_a_chain_is_one_trajectory_whose_roles_are_sampled_in_turn():
    gen = refine_generator(k=4)
    table = gen.task_play(2)
    rows = table.to_pylist()
    calls = gen.engines["learner"].calls
    assert len(rows) == 2 * 4 * 3 and len(calls) == 3  # a call per role, every chain in each
    assert [c["prompts"][0][:3] for c in calls][1:] == ["c: ", "r: "]
    assert not any(p.startswith(("c: ", "r: ")) for p in calls[0]["prompts"])  # the answers' own
    chains = {}
    for r in rows:
        chains.setdefault(r["traj_id"], []).append(r)
    assert len(chains) == 8
    for chain in chains.values():
        assert [(r["turn"], r["role"]) for r in chain] == [(0, 0), (1, 1), (2, 2)]
        assert len({(r["group_id"], r["seed"]) for r in chain}) == 1
        v0 = chain[0]["response_text"]
        assert decode(chain[2]["prompt_ids"]).endswith(f"={v0} no\n")
    verifier = Verifier(decode, task=TASK)
    scored = verifier.training_turns(table).to_pylist()
    assert len(scored) == 24 and not verifier.rejected
    for r in scored:  # a right answer is always broken (-1), a wrong one always fixed (+1)
        if r["role"] == REFINER:
            assert r["reward"] == (1.0 if dict(r["scores"])["first"] == 0 else -1.0)
    buf = ReplayBuffer(BufferConfig(min_size=1), builder=BuilderConfig(rows="rl", group_advantage="drgrpo"))
    assert buf.add(schema.from_rows(scored)) == 24
    batch = buf.sample(24, learner_version=0).to_pylist()
    for role in (ANSWER, CRITIC, REFINER):  # each role's advantages are centred on its own samples
        for group in {r["group_id"] for r in batch}:
            advantages = [r["advantage"] for r in batch if r["role"] == role and r["group_id"] == group]
            assert len(advantages) == 4 and sum(advantages) == pytest.approx(0.0, abs=1e-6)


def answer(text: str) -> dict:
    """A row's reply fields for `text`, consistent with each other."""
    ids = encode(text)[1:]  # without bos
    return {"response_text": text, "response_ids": ids, "behaviour_logprobs": [-0.5] * len(ids)}


@pytest.mark.parametrize(
    "tamper, reason",
    [
        (lambda rows: rows[1].update(response_text="ok"), "text_mismatch"),  # tokens say "no"
        (lambda rows: rows[0].update(answer("99")), "prompt_mismatch"),  # the critic saw another answer
        (lambda rows: rows.pop(), "task_turns"),  # no refinement
        (lambda rows: rows[2].update(role=1), "task_turns"),
        (lambda rows: rows[2].update(seed=rows[2]["seed"] + 1), "reference_mismatch"),
    ],
    ids=["critique", "answer", "incomplete", "role", "problem"],
)
def test_a_tampered_chain_is_rejected(tamper, reason):
    rows = refine_generator(k=1).task_play(1).to_pylist()
    tamper(rows)
    verifier = Verifier(decode, task=TASK)
    assert verifier.verify(schema.from_rows(rows)).num_rows == 0
    assert verifier.rejected == {reason: 1}


def test_a_refine_run_reports_its_chain_figures_and_trains_each_role_on_its_own_reward():
    cfg = load_config("configs/refine.yaml", [])
    assert set(cfg.acceptance) == {
        f"refine/held_out/{f}" for f in ("critic_agreement", "refine_gain", "flips_to_wrong")
    }
    with pytest.raises(ConfigError, match="acceptance.refine/held_out/selection_gain"):
        load_config("configs/refine.yaml", ["acceptance={refine/held_out/selection_gain: '>= 0.1'}"])
    with pytest.raises(ConfigError, match="builder.rows: refine trains each role"):
        load_config("configs/refine.yaml", ["builder.rows=best_worst", "learner.reference=true"])


def test_the_held_out_evaluation_carries_each_greedy_answer_through_the_chain():
    gen = refine_generator(held_out=6)
    result = gen.evaluate_task()
    calls = gen.engines["learner"].calls
    # greedy answers, their samples, then the greedy critiques and refinements of the greedy answers
    assert [len(c["prompts"]) for c in calls] == [6, 6 * 4, 6, 6]
    assert [c["temperature"] for c in calls[2:]] == [0.0, 0.0]
    assert result["critic_flags_wrong"] == 1.0 and result["critic_valid"] == 1.0
    assert result["critic_passes_right"] == 0.0
    # every answer is doubted: the wrong ones (one too many) are fixed, the right ones broken
    assert result["refined_accuracy"] == pytest.approx(1 - result["first_accuracy"])
    assert result["flips_to_wrong"] == pytest.approx(result["first_accuracy"])
    assert result["critic_agreement"] == pytest.approx(1 - result["first_accuracy"])


def test_each_chain_that_changes_its_answers_rightness_is_written_as_a_preference_pair(tmp_path):
    import pyarrow.parquet as pq

    from actors.buffer import PreferenceLog

    gen = refine_generator(k=2)
    log = PreferenceLog(tmp_path / "preferences", decode, "refine")
    buf = ReplayBuffer(BufferConfig(min_size=1), builder=BuilderConfig(rows="rl"), preferences=log)
    scored = Verifier(decode, task=TASK).training_turns(gen.task_play(3))
    buf.add(scored)
    log.flush()
    table = pq.read_table(tmp_path / "preferences")
    assert table.num_rows == 6  # every chain: a right answer broken, or a wrong one fixed
    refined = {r["traj_id"]: r for r in scored.to_pylist() if r["turn"] == 2}
    for pair in table.to_pylist():
        problem = TASK.problem(refined[pair["traj_id"]]["seed"])
        assert pair["prompt"] == problem.prompt and pair["method"] == "refine"
        assert pair["chosen"] == problem.reference != pair["rejected"]
        scores = dict(pair["chosen_scores"])
        assert scores["first"] != scores["correct"]
    rows = scored.to_pylist()  # one chain kept its (wrong) answer: no pair
    kept = next(r for r in rows if r["turn"] == 2)
    kept["scores"] = {**dict(kept["scores"]), "first": 0.0, "correct": 0.0}
    assert schema.chain_pairs(schema.from_rows(rows), decode).num_rows == 5
    assert schema.chain_pairs(schema.from_rows([r for r in rows if r["turn"] != 0]), decode).num_rows == 0


def test_fix_targets_give_each_wrong_refined_answer_a_right_one_its_problem_found():
    scored = Verifier(decode, task=TASK).training_turns(refine_generator(k=4).task_play(2))
    plain, _, _ = build(scored, BuilderConfig(rows="rl"))
    admitted, _, counts = build(scored, BuilderConfig(rows="rl", fix_targets=True))
    fixes = [r for r in admitted.to_pylist() if r["label"] == "sft"]
    broken = [r for r in scored.to_pylist() if r["role"] == REFINER and dict(r["scores"])["correct"] == 0.0]
    assert len(broken) == 4 and counts["fix_targets"] == len(fixes) == len(broken)  # each right answer broken
    assert admitted.num_rows == plain.num_rows + len(fixes)  # the rl rows are as they were
    by_traj = {r["traj_id"]: r for r in broken}
    for fix in fixes:
        wrong = by_traj[fix["traj_id"]]
        assert fix["prompt_ids"] == wrong["prompt_ids"] and fix["role"] == REFINER
        assert fix["response_text"] == TASK.problem(fix["seed"]).reference != wrong["response_text"]
        assert fix["advantage"] is None and fix["behaviour_logprobs"] == [0.0] * len(fix["response_ids"])
    # a problem none of whose chains found the right answer gives no target
    none_right = [
        {**r, "reward": 0.0, "scores": {**dict(r["scores"]), "correct": 0.0}} if r["role"] != CRITIC else r
        for r in scored.to_pylist()
    ]
    admitted, _, counts = build(schema.from_rows(none_right), BuilderConfig(rows="rl", fix_targets=True))
    assert counts["fix_targets"] == 0 and {r["label"] for r in admitted.to_pylist()} == {"rl"}
    # a frozen refiner is given no targets either, and its rl rows are not built
    frozen = BuilderConfig(rows="rl", fix_targets=True, frozen_roles=["refiner"])
    admitted, _, counts = build(scored, frozen)
    assert counts["fix_targets"] == 0 and REFINER not in {r["role"] for r in admitted.to_pylist()}
    assert counts["rows_frozen"] == sum(r["role"] == REFINER for r in scored.to_pylist()) > 0
    # nor an anchored one, which trains the KL alone: its rows are all labelled anchor
    anchored = BuilderConfig(rows="rl", fix_targets=True, anchored_roles=["refiner"])
    admitted, _, counts = build(scored, anchored)
    assert counts["fix_targets"] == 0
    assert {r["label"] for r in admitted.to_pylist() if r["role"] == REFINER} == {"anchor"}


def test_fix_flagged_only_gives_targets_only_where_the_critique_said_no():
    scored = Verifier(decode, task=TASK).training_turns(refine_generator(k=4).task_play(2)).to_pylist()
    wrong = [r for r in scored if r["role"] == REFINER and dict(r["scores"])["correct"] == 0.0]
    assert len(wrong) == 4
    # (the scripted critic always says "no"): two of the wrong refined answers are marked as
    # following a "no", one as following an "ok", and one is scored without the part (not flagged)
    flagged = {wrong[0]["traj_id"], wrong[2]["traj_id"]}
    for r in wrong:
        r["scores"] = {**dict(r["scores"]), "flagged": float(r["traj_id"] in flagged)}
    del wrong[3]["scores"]["flagged"]
    table = schema.from_rows(scored)
    every, _, _ = build(table, BuilderConfig(rows="rl", fix_targets=True))
    admitted, _, counts = build(table, BuilderConfig(rows="rl", fix_targets=True, fix_flagged_only=True))
    fixes = [r for r in admitted.to_pylist() if r["label"] == "sft"]
    assert counts["fix_targets"] == 2 and {f["traj_id"] for f in fixes} == flagged
    assert admitted.num_rows == every.num_rows - 2  # the rl rows are as they were
    with pytest.raises(ConfigError, match="builder.fix_flagged_only: narrows builder.fix_targets"):
        load_config("configs/refine.yaml", ["builder.fix_flagged_only=true"])


def test_fix_targets_are_the_refine_tasks_and_refused_elsewhere_by_name():
    assert load_config("configs/refine.yaml", ["builder.fix_targets=true"]).builder.fix_targets
    with pytest.raises(ConfigError, match="builder.fix_targets"):
        load_config("configs/rft.yaml", ["builder.fix_targets=true"])


UNANCHORED = ["builder.anchored_roles=[]", "learner.anchor_coef=0"]


def test_the_anchor_is_some_of_the_tasks_roles_with_its_coefficient_and_refused_otherwise_by_name():
    cfg = load_config("configs/refine.yaml", ["builder.anchor_samples=2"])
    assert cfg.builder.anchored_roles == ["answer"] and cfg.learner.anchor_coef == 1.0  # as shipped
    assert cfg.builder.anchor_samples == 2 and not cfg.builder.frozen_roles
    bad = {
        "builder.anchored_roles": [
            ["builder.frozen_roles=[answer]"],  # also frozen
            ["builder.anchored_roles=[judge]"],
            ["builder.anchored_roles=[answer, critic, refiner]"],
            ["builder.frozen_roles=[critic, refiner]"],  # every role anchored or frozen
        ],
        "learner.anchor_coef": [
            ["builder.anchored_roles=[]"],
            ["learner.anchor_coef=0"],
            ["learner.anchor_coef=-1.0"],
        ],  # no role; negative
        "learner.ref_refresh_every": [["learner.ref_refresh_every=10"]],  # the reference would move
        "builder.anchor_samples": [[*UNANCHORED, "builder.anchor_samples=2"], ["builder.anchor_samples=-1"]],
    }
    for name, cases in bad.items():
        for overrides in cases:
            with pytest.raises(ConfigError, match=name):
                load_config("configs/refine.yaml", overrides)
    with pytest.raises(ConfigError, match="learner.anchor_coef: the KL on a task's"):
        load_config("configs/tictactoe.yaml", ["learner.anchor_coef=1.0"])


def test_a_critic_with_working_is_sampled_checked_and_scored_through_the_chain():
    gen = refine_generator(k=4, working=True)
    table = gen.task_play(2)
    verifier = Verifier(decode, task=WORKING)
    rows = verifier.training_turns(table).to_pylist()
    assert len(rows) == len(table) == 2 * 4 * 3 and not verifier.rejected  # every prompt rebuilt as sampled
    parts = [(r["role"], dict(r["scores"]), r["reward"]) for r in rows]
    firsts = [s["correct"] for role, s, _ in parts if role == ANSWER]
    assert 0 < sum(firsts) < len(firsts)  # right and wrong first answers
    # the scripted critic's sum is always right, so it agrees with the checker every time
    assert all(
        s["agree"] == s["working"] == 1.0 and reward == 1.5 for role, s, reward in parts if role == CRITIC
    )
    refined = [s for role, s, _ in parts if role == REFINER]
    assert all(s["correct"] == 1.0 for s in refined)  # the refiner took the critic's sum
    assert [s["flagged"] for s in refined] == [1.0 - f for f in firsts]
    figures = gen.evaluate_task()
    assert figures["critic_agreement"] == figures["critic_working"] == figures["refined_accuracy"] == 1.0
    assert figures["flips_to_wrong"] == 0.0


def test_a_compared_verdict_is_drawn_alike_where_the_chain_is_sampled_and_where_it_is_checked():
    gen = refine_generator(k=4, working="compared")
    table = gen.task_play(2)
    task = gen.task
    verifier = Verifier(decode, task=task)
    rows = verifier.training_turns(table).to_pylist()
    assert len(rows) == 2 * 4 * 3 and not verifier.rejected  # the refiner's prompt rebuilt as sampled
    refiner_prompts = [decode(r["prompt_ids"]) for r in rows if r["role"] == REFINER]
    firsts = [dict(r["scores"])["correct"] for r in rows if r["role"] == ANSWER]
    assert [p.endswith(" no\n") for p in refiner_prompts] == [f == 0.0 for f in firsts]
    assert all(dict(r["scores"])["agree"] == 1.0 and r["reward"] == 1.5 for r in rows if r["role"] == CRITIC)
    figures = gen.evaluate_task()
    assert figures["critic_agreement"] == figures["critic_working"] == figures["refined_accuracy"] == 1.0
