"""A task's rows from generator to learner batch on a scripted engine (tests/engines.py), no
vLLM and no Ray: groups of k samples per prompt, the verifier's scoring and its
rejections, the builder in the buffer, and the held-out evaluation. The same path on real
engines: test_driver.py."""

from __future__ import annotations

import itertools

import pytest

from actors.buffer import ReplayBuffer
from actors.generator import Generator
from actors.verifier import Verifier
from selfplay import schema
from selfplay.builder import group_means
from selfplay.config import BufferConfig, BuilderConfig, GeneratorConfig, TaskConfig
from selfplay.tasks import Problem, Score, make_task
from selfplay.tasks.base import ScoreCache
from selfplay.tasks.codegen import canonical
from tests.engines import EngineMaker, RuleEngine, decode, rule_task_generator

TASK = make_task("arithmetic", digits=2, terms=2)


def answer(prompt: str) -> str:
    """The right answer to an arithmetic prompt such as '12+45='."""
    return str(sum(int(t) for t in prompt.rstrip("=").replace("-", "+-").split("+") if t))


def alternating():
    """Right on every other reply, so each group of an even k holds both."""
    calls = itertools.count()
    return lambda prompt: answer(prompt) if next(calls) % 2 == 0 else answer(prompt) + "1"


def task_generator(rule, k: int = 4, prompts: int = 3, held_out: int = 10) -> Generator:
    cfg = TaskConfig(
        name="arithmetic", samples_per_prompt=k, prompts_per_wave=prompts, held_out=held_out, eval_samples=k
    )
    return rule_task_generator(rule, cfg)


def test_a_wave_samples_each_prompt_k_times_in_one_engine_call():
    gen = task_generator(alternating(), k=4, prompts=3)
    table = gen.task_play(3)
    rows = table.to_pylist()
    assert len(rows) == 12 and len(gen.engines["learner"].calls) == 1
    by_group = {}
    for r in rows:
        by_group.setdefault(r["group_id"], []).append(r)
    assert len(by_group) == 3 and all(len(g) == 4 for g in by_group.values())
    for group in by_group.values():
        assert len({(r["seed"], r["reference_id"], tuple(r["prompt_ids"])) for r in group}) == 1
        assert len({r["traj_id"] for r in group}) == 4
    problem = TASK.problem(rows[0]["seed"])
    assert rows[0]["reference_id"] == problem.id and decode(rows[0]["prompt_ids"]) == problem.prompt
    assert all(r["task"] == "arithmetic" and r["reward"] is None and r["trainable"] for r in rows)
    assert gen.counts["games"] == 12 and gen.counts["turns"] == 12


def test_the_verifier_scores_replies_and_the_builder_turns_groups_into_rows():
    table = task_generator(alternating(), k=4, prompts=3).task_play(3)
    verifier = Verifier(decode, task=TASK)
    scored = verifier.training_turns(table).to_pylist()
    assert len(scored) == 12 and not verifier.rejected
    for r in scored:
        right = r["response_text"] == answer(TASK.problem(r["seed"]).prompt)
        assert r["reward"] == float(right) and dict(r["scores"])["correct"] == float(right)
        assert not r["illegal"]
    buf = ReplayBuffer(BufferConfig(min_size=1), builder=BuilderConfig(rows="rl", group_advantage="drgrpo"))
    assert buf.add(schema.from_rows(scored)) == 12
    batch = buf.sample(12, learner_version=0).to_pylist()
    assert sorted(r["advantage"] for r in batch) == [-0.5] * 6 + [0.5] * 6  # 2 of 4 right in each group


@pytest.mark.parametrize(
    "tamper, reason",
    [
        (lambda r: r.update(reference_id="arithmetic:1+1"), "reference_mismatch"),
        (lambda r: r.update(prompt_ids=r["prompt_ids"][:-1]), "prompt_mismatch"),
        (lambda r: r.update(task="codegen"), "unknown_task"),
        (lambda r: r.update(response_text="0"), "text_mismatch"),
        (lambda r: r.update(behaviour_logprobs=[0.5] * len(r["response_ids"])), "bad_logprob"),
        (lambda r: r.update(turn=1), "task_turns"),
    ],
)
def test_the_verifier_rejects_a_reply_that_does_not_match_its_problem(tamper, reason):
    rows = task_generator(lambda p: answer(p) + "7", k=1, prompts=1).task_play(1).to_pylist()
    tamper(rows[0])
    verifier = Verifier(decode, task=TASK)
    assert verifier.verify(schema.from_rows(rows)).num_rows == 0
    assert verifier.rejected == {reason: 1}


def test_a_malformed_reply_is_scored_zero_and_marked_illegal():
    rows = task_generator(lambda p: "twelve", k=1, prompts=1).task_play(1)
    (row,) = Verifier(decode, task=TASK).verify(rows).to_pylist()
    assert row["reward"] == 0.0 and row["illegal"] and dict(row["scores"])["format"] == 0.0


def test_the_held_out_evaluation_reads_greedy_accuracy_and_pass_at_k():
    right = task_generator(answer, k=4, held_out=10).evaluate_task()
    assert (right["accuracy"], right["pass_at_k"], right["sample_accuracy"], right["problems"]) == (
        1.0,
        1.0,
        1.0,
        10,
    )
    gen = task_generator(alternating(), k=4, held_out=10)
    half = gen.evaluate_task()  # the greedy call takes 10 replies (even count), then 4 per problem
    assert half["pass_at_k"] == 1.0 and half["sample_accuracy"] == 0.5 and half["accuracy"] == 0.5
    assert gen.eval_counts["games"] == 50 and gen.counts["games"] == 0  # evaluations count apart
    calls = gen.engines["learner"].calls
    assert calls[0]["temperature"] == 0.0 and calls[1]["temperature"] == gen.cfg.temperature
    assert {p for p in calls[0]["prompts"]} == {p.prompt for p in TASK.held_out(10)}


def test_code_replies_are_scored_by_running_hidden_tests_in_the_sandbox():
    def right(prompt: str) -> str:  # 'f: add 3 then double\n' -> '(x+3)*2'
        return canonical(prompt.removeprefix("f: ").strip().split(" then "))

    replies = itertools.cycle([right, lambda p: "x+", lambda p: "open('/etc')"])
    gen = Generator(
        "gen-0",
        "run-0",
        {"tictactoe": 1.0},
        RuleEngine(rule=lambda p: next(replies)(p)),
        EngineMaker(),
        GeneratorConfig(max_response_tokens=40),
        seed=0,
        task_cfg=TaskConfig(name="codegen", params={"steps": 2}, samples_per_prompt=3),
    )
    verifier = Verifier(decode, task=make_task("codegen", steps=2))
    good, malformed, escape = verifier.verify(gen.task_play(1)).to_pylist()
    assert not verifier.rejected
    assert good["reward"] == 1.0 and dict(good["scores"])["pass_rate"] == 1.0 and not good["illegal"]
    assert malformed["reward"] == 0.0 and malformed["illegal"]  # not an expression: never run
    assert escape["reward"] == 0.0 and verifier.score_reasons == {"format": 1, "forbidden": 1}


def test_the_hard_pool_sends_prompts_back_while_they_still_teach():
    gen = task_generator(alternating(), k=4, prompts=4)
    gen.task_cfg = TaskConfig(
        name="arithmetic", samples_per_prompt=4, hard_fraction=1.0, hard_below=0.5, screen_samples=2
    )
    first = Verifier(decode, task=TASK).verify(gen.task_play(4))
    gen.note_groups(group_means(first))  # every group right half the time: all hard
    assert sorted(gen.hard) == sorted(set(first["seed"].to_pylist()))
    again = gen.task_play(4)
    assert set(again["seed"].to_pylist()) <= set(gen.hard) and gen.counts["hard_prompts"] == 4
    # a screen of 2 samples that stopped a prompt says too little: the pool keeps it
    gen.note_groups([(seed, 0.0, 0.0, 2) for seed in gen.hard])
    assert sorted(gen.hard) == sorted(set(first["seed"].to_pylist()))
    gen.note_groups([(seed, 1.0, 0.0, 4) for seed in gen.hard])  # solved: they leave
    assert (
        gen.hard == []
        and len(set(gen.task_play(2)["seed"].to_pylist()) & set(first["seed"].to_pylist())) == 0
    )


def test_the_learnability_curriculum_draws_classes_whose_groups_differ():
    """Problems without a carry ("c0" classes) are always answered right here, the others
    right on every other reply: after a wave's groups come back scored, new problems of the
    uniform classes are drawn at the floor's weight (1/20 of the others'), not as often as
    the task's own draw (about half of them)."""
    calls = itertools.count()

    def rule(prompt: str) -> str:
        if TASK.difficulty(Problem("arithmetic", "arithmetic:" + prompt[:-1], prompt, "", "")).endswith("c0"):
            return answer(prompt)
        return answer(prompt) if next(calls) % 2 == 0 else answer(prompt) + "1"

    gen = task_generator(rule, k=4, prompts=64)
    gen.task_cfg = TaskConfig(name="arithmetic", samples_per_prompt=4, curriculum="learnability")

    def uniform_share(table) -> float:
        seeds = set(table["seed"].to_pylist())
        return sum(TASK.difficulty(TASK.problem(s)).endswith("c0") for s in seeds) / len(seeds)

    first = Verifier(decode, task=TASK).verify(gen.task_play(64))  # nothing measured: the task's own draw
    assert 0.3 < uniform_share(first) < 0.7 and gen.counts["curriculum_skipped"] == 0
    gen.note_groups(group_means(first))
    assert any(k.endswith("c0") for k in gen.learnability) and any(
        not k.endswith("c0") for k in gen.learnability
    )
    assert {key: rate for key, (_, rate) in gen.learnability.items()} == {
        key: 0.0 if key.endswith("c0") else 1.0 for key in gen.learnability
    }
    assert uniform_share(gen.task_play(64)) < 0.2 and gen.counts["curriculum_skipped"] > 0


def test_a_screen_samples_the_rest_only_where_its_scores_differ():
    """task.screen_samples 2 of k 4: problems the policy always gets right (an even sum of
    the prompt's characters here) stop at their 2 screening samples; the others (right on
    every other reply) get 2 more in a second engine call, in the same group. The builder
    counts every sample and its variance filter holds back the uniform groups."""
    calls = itertools.count()

    def rule(prompt: str) -> str:
        if sum(map(ord, prompt)) % 2 == 0:
            return answer(prompt)
        return answer(prompt) if next(calls) % 2 == 0 else answer(prompt) + "1"

    gen = task_generator(rule, k=4, prompts=8)
    gen.task_cfg = TaskConfig(name="arithmetic", samples_per_prompt=4, screen_samples=2)
    rows = gen.task_play(8).to_pylist()
    by_group = {}
    for r in rows:
        by_group.setdefault(r["group_id"], []).append(r)
    easy = {g for g, rs in by_group.items() if sum(map(ord, TASK.problem(rs[0]["seed"]).prompt)) % 2 == 0}
    assert 0 < len(easy) < 8 and len(by_group) == 8  # both kinds among the 8 problems
    assert {g: len(rs) for g, rs in by_group.items()} == {g: 2 if g in easy else 4 for g in by_group}
    assert len(gen.engines["learner"].calls) == 2 and gen.counts["screened_out"] == len(easy)
    assert gen.counts["games"] == len(rows) == 2 * len(easy) + 4 * (8 - len(easy))
    scored = Verifier(decode, task=TASK).training_turns(schema.from_rows(rows))
    buf = ReplayBuffer(BufferConfig(min_size=1), builder=BuilderConfig(rows="rl", variance_filter=True))
    assert buf.add(scored) == 4 * (8 - len(easy))  # the screened-out groups are held back...
    counts = buf.stats()
    assert (counts["samples"], counts["groups_held_back"]) == (len(rows), len(easy))  # ...and counted


def test_a_screen_that_finds_every_problem_uniform_calls_the_engine_once():
    gen = task_generator(answer, k=4, prompts=3)
    gen.task_cfg = TaskConfig(name="arithmetic", samples_per_prompt=4, screen_samples=3)
    rows = gen.task_play(3).to_pylist()
    assert len(rows) == 9 and len(gen.engines["learner"].calls) == 1 and gen.counts["screened_out"] == 3


def test_each_distinct_reply_is_scored_once_and_a_timeout_is_scored_again():
    calls = []

    def score(prompt, response, reference):
        calls.append(response)
        return Score(0.0, reason="timeout") if response == "slow" else Score(float(response == reference))

    cached = ScoreCache(score, size=2)
    assert [cached("p", r, "1").total for r in ("1", "1", "2", "1")] == [1.0, 1.0, 0.0, 1.0]
    assert calls == ["1", "2"]
    cached("p", "slow", "1"), cached("p", "slow", "1")
    assert calls.count("slow") == 2  # a timeout may not repeat: never remembered
    cached("p", "3", "1")  # a third distinct reply: the oldest ("1") is forgotten
    cached("p", "1", "1")
    assert calls.count("1") == 2 and cached.calls == len(calls)


def test_a_reply_cut_off_by_the_token_limit_scores_0_where_the_config_asks():
    """task.truncated zero: a reply that never ended ("117" and spaces to the limit) read as
    117 and was paid; one that ends at the limit (its last token the end of sequence, here
    BOS, which decodes to nothing as vLLM drops special tokens) is scored as written."""
    from selfplay.tasks import reply_tokens
    from tests.engines import BOS

    cfg = TaskConfig(name="arithmetic", params={"digits": 2, "terms": 2}, samples_per_prompt=2)
    padded = rule_task_generator(lambda p: answer(p) + " " * 50, cfg)
    limit = reply_tokens(padded.task, padded.cfg.max_response_tokens)
    table = padded.task_play(2)
    assert {len(ids) for ids in table["response_ids"].to_pylist()} == {limit}
    as_written = Verifier(decode, task=padded.task).verify(table).to_pylist()
    assert [r["reward"] for r in as_written] == [1.0] * 4  # task.truncated score, the default
    strict = Verifier(decode, task=padded.task, cut_at=limit)
    cut = strict.verify(table).to_pylist()
    assert all(r["reward"] == 0.0 and r["illegal"] for r in cut) and strict.score_reasons == {"truncated": 4}
    ended = rule_task_generator(lambda p: (answer(p) + " " * 50)[: limit - 1] + chr(BOS), cfg)
    rows = Verifier(decode, task=ended.task, cut_at=limit).verify(ended.task_play(2)).to_pylist()
    assert {len(r["response_ids"]) for r in rows} == {limit} and [r["reward"] for r in rows] == [1.0] * 4
