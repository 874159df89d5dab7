"""Self-rewarding without Ray or a model: the judge role's prompt, scale and parsing on hand
values; its agreement with the rule judge; the labelled rows that teach the role; the
generator asking the policy to rate its own replies, the verifier rewarding the rating and
keeping the rule judge's total beside it; best-vs-worst pairs; the config's checks."""

from __future__ import annotations

import dataclasses
import itertools
import random
import re

import pytest

from actors.buffer import ReplayBuffer
from actors.verifier import Verifier
from selfplay import schema
from selfplay.builder import COUNTS as BUILDER_COUNTS
from selfplay.builder import JUDGE_ROLE, best_worst, build, judge_examples, rules_agreement, targets_of
from selfplay.config import BufferConfig, BuilderConfig, ConfigError, TaskConfig, load_config
from selfplay.driver import builder_metrics
from selfplay.evals import judge_summary
from selfplay.tasks import make_task
from selfplay.tasks.judges import (
    RULES,
    SELF_JUDGE,
    Constitution,
    degrade,
    mean_points,
    pairwise_agreement,
    rating_prompt,
    rubric_marks,
    rubric_points,
)
from tests.engines import EngineMaker, decode, rule_task_generator
from tests.rows import make_task_row as sample

PRINCIPLES = [{"name": "sentiment"}, {"name": "mentions"}, {"name": "no_profanity", "hard": True}]
TASK_CFG = TaskConfig(
    name="describe",
    principles=PRINCIPLES,
    samples_per_prompt=4,
    judge="self",
    judge_samples=3,
    judge_temperature=0.7,
    held_out=6,
)


# ---- the judge role: pure parts -----------------------------------------------------------


def test_the_rating_prompt_shows_the_prompt_and_the_reply():
    assert (
        rating_prompt("fox, meadow, dusk:", "the fox is calm.")
        == "rate fox, meadow, dusk: the fox is calm. ="
    )


RUBRIC = Constitution.from_config(
    [
        {"name": "sentiment"},
        {"name": "mentions"},
        {"name": "brevity", "weight": 0.5, "params": {"max_words": 4}},
        {"name": "no_profanity", "hard": True},
    ]
)


def test_the_rubric_marks_each_principle_met_well_met_or_unmet():
    # sentiment 0.81 >= 0.75; mentions 1/3 < 0.5; 5 words: brevity 0.75; no curse
    assert rubric_marks(RUBRIC, "fox, meadow, dusk:", "the fox is very lovely", "fox|meadow|dusk") == "2022"
    # a curse: sentiment below 0.5 and the hard principle unmet; mentions 2/3, brevity 0.5
    assert (
        rubric_marks(RUBRIC, "fox, meadow, dusk:", "damn, the fox in the meadow", "fox|meadow|dusk") == "0110"
    )


@pytest.mark.parametrize(
    "text, expected",
    [
        ("2022", (1 + 0.5 + 1) / 3.5),  # each weight times its mark over 2, over all weights
        ("1011", (0.5 + 0.25 + 0.5) / 3.5),
        (" 2222 ", 1.0),
        ("0001", 0.5 / 3.5),
        ("2220", 0.0),  # the hard principle unmet
        ("222", None),  # a mark short
        ("22222", None),
        ("3222", None),
        ("1a11", None),
        ("", None),
    ],
)
def test_rubric_points_weigh_the_marks_and_read_nothing_else(text, expected):
    points = rubric_points(RUBRIC, text)
    assert points == (None if expected is None else pytest.approx(expected))


def test_the_mean_points_skip_what_is_unreadable_and_are_none_when_nothing_is():
    assert mean_points(RUBRIC, ["2222", "x", "2220"]) == pytest.approx(0.5)
    assert mean_points(RUBRIC, ["x", "", "3333"]) is None


def test_degrade_spoils_a_reply_as_a_sampling_policy_does_within_the_limit():
    reply = "the fox in the meadow is lovely and calm."
    rng = random.Random(0)
    spoilt = [degrade(reply, rng, 60) for _ in range(200)]
    assert all(0 < len(s) <= 60 and s != reply for s in spoilt)
    words = reply.split()

    def looped(s):
        w = s.split()
        return any(w[i] == w[i + 1] == w[i + 2] for i in range(len(w) - 2))

    assert any(looped(s) for s in spoilt)
    assert any(reply.startswith(s) for s in spoilt)  # cut short
    assert any(len(s.split()) > len(words) and set(s.split()) <= set(words) and not looped(s) for s in spoilt)
    misspelt = [s for s in spoilt if len(s) == len(reply) and len(s.split()) == len(words)]
    assert misspelt and all(sum(a != b for a, b in zip(s, reply)) == 1 for s in misspelt)
    assert degrade(reply, random.Random(5), 60) == degrade(reply, random.Random(5), 60)


def test_agreement_counts_only_pairs_both_judges_order():
    judge = [0.8, 0.2, 0.5, 0.5]
    rules = [0.9, 0.1, 0.9, 0.3]
    # (0,1): both say first; (0,2): judge first, rules tie: not decided; (1,2): both second;
    # (2,3): judge tie; (1,3): judge second, rules second; (0,3): judge first, rules first
    pairs = list(itertools.combinations(range(4), 2))
    assert pairwise_agreement(judge, rules, pairs) == (4, 4)
    assert pairwise_agreement(judge, [0.1, 0.9, 0.5, 0.5], [(0, 1), (0, 2), (2, 3)]) == (0, 2)


def test_the_judge_summary_against_the_rule_judge():
    ratings = [0.8, 0.2, None, 0.6]
    rules = [0.6, 0.4, 0.9, 0.9]
    summary = judge_summary(ratings, rules, [(0, 1), (0, 2), (1, 3), (0, 3)], greedy=[0, 2])
    assert summary["judge_score"] == 0.8  # reply 2 is unrated
    # (0,2) has an unrated reply; (0,1) agree; (1,3) agree; (0,3) judge first, rules second
    assert summary["judge_decided"] == 3 and summary["judge_agreement"] == pytest.approx(2 / 3)
    assert summary["judge_error"] == pytest.approx((0.2 + 0.2 + 0.3) / 3)
    assert summary["judge_rated"] == 0.75
    empty = judge_summary([None, None], [0.1, 0.2], [(0, 1)], [0])
    assert empty == {
        "judge_score": 0.0,
        "judge_agreement": 0.0,
        "judge_decided": 0,
        "judge_error": 0.0,
        "judge_rated": 0.0,
    }


# ---- the labelled rows that teach the judge role -----------------------------------------


def test_judge_examples_mark_demonstrations_by_the_constitution_in_the_judge_role():
    task = make_task("describe", principles=PRINCIPLES)
    table = judge_examples(task, lambda text, special: [ord(c) for c in text], 2, n=40, seed=3, run_id="r")
    rows = table.to_pylist()
    assert (
        len(rows) == 40
        and {r["role"] for r in rows} == {JUDGE_ROLE}
        and {r["label"] for r in rows} == {"sft"}
    )
    verdicts = set()
    for r in rows:
        problem = task.problem(r["seed"])
        prompt = "".join(map(chr, r["prompt_ids"]))
        assert prompt.startswith(f"rate {problem.prompt} ") and prompt.endswith(" =")
        reply = prompt[len(f"rate {problem.prompt} ") : -2]
        assert r["response_text"] == rubric_marks(task.principles, problem.prompt, reply, problem.reference)
        assert r["response_ids"] == [ord(c) for c in r["response_text"]] + [2]
        verdicts.add(r["response_text"])
    assert len(verdicts) >= 6  # demonstrations of mixed quality, half spoilt: many verdicts
    assert targets_of(table) == {}  # never taken for a problem's target (SPIN's)


# ---- the policy rates its own replies; the verifier rewards the rating ----------------------

GOOD = "the fox is lovely."


def policy(ratings: dict[str, str]):
    """Replies alternating good and cursed; in the judge role, the marks `ratings` gives a reply
    (PRINCIPLES: sentiment, mentions, no_profanity, the last hard)."""
    replies = itertools.cycle([GOOD, "damn, it is sad.", GOOD, "it is grim."])

    def rule(prompt: str) -> str:
        if prompt.startswith("rate "):
            return next((v for k, v in ratings.items() if f" {k} =" in prompt), "?")
        return next(replies)

    return rule


def test_the_policy_rates_each_reply_and_the_verifier_rewards_the_rating():
    gen = rule_task_generator(policy({GOOD: "101", "damn, it is sad.": "100"}), TASK_CFG, 40)
    table = gen.task_play(2)
    engine = gen.engines["learner"]
    asks, ratings = engine.calls
    assert len(asks["prompts"]) == 8 and len(ratings["prompts"]) == 8 * 3  # 3 ratings of each reply
    assert ratings["max_tokens"] == [4] * 24 and ratings["temperature"] == 0.7
    assert all(p.startswith("rate ") for p in ratings["prompts"])
    rows = table.to_pylist()
    rated = [dict(r["scores"] or ()).get(SELF_JUDGE) for r in rows[:4]]
    assert rated == pytest.approx([1 / 3, 0.0, 1 / 3, None])  # cursed: the hard principle unmet

    verifier = Verifier(decode, task=gen.task, self_judged=True)
    scored = verifier.verify(table).to_pylist()
    assert len(scored) == 6 and verifier.rejected == {"unrated": 2}  # "it is grim." got no rating
    task = gen.task
    for r in scored:
        r["scores"] = dict(r["scores"])
        problem = task.problem(r["seed"])
        rules = task.score(problem.prompt, r["response_text"], problem.reference)
        assert r["reward"] == pytest.approx(r["scores"][SELF_JUDGE]) and r["outcome"] == r["reward"]
        assert r["scores"][RULES] == pytest.approx(rules.total)
        assert r["scores"]["sentiment"] == pytest.approx(rules.parts["sentiment"])
    # without self_judged the same rows are scored by the rule judge alone
    plain = Verifier(decode, task=gen.task).verify(gen.task_play(1)).to_pylist()
    assert all(SELF_JUDGE not in dict(r["scores"]) and r["reward"] == r["outcome"] for r in plain)


def test_a_snapshot_judges_when_the_judges_weights_are_the_snapshots():
    """task.judge_weights snapshot: the loaded member rates every reply; the policy only answers."""
    honest = {GOOD: "111", "damn, it is sad.": "110", "it is grim.": "011"}
    backwards = {GOOD: "000", "damn, it is sad.": "111", "it is grim.": "111"}
    gen = rule_task_generator(policy(backwards), dataclasses.replace(TASK_CFG, judge_samples=1), 40)
    gen.new_engine = EngineMaker(rule=policy(honest))
    gen.add_opponent("snap-0", "/snapshots/0")
    rows = gen.task_play(1, judge="snap-0").to_pylist()
    learner, snapshot = gen.engines["learner"], gen.engines["snap-0"]
    assert len(learner.calls) == 1 and not any(p.startswith("rate ") for p in learner.calls[0]["prompts"])
    (rates,) = [c["prompts"] for c in snapshot.calls]
    assert len(rates) == 4 and all(p.startswith("rate ") for p in rates)
    assert [dict(r["scores"])[SELF_JUDGE] for r in rows] == pytest.approx([0.5, 0.0, 0.5, 1 / 3])
    assert {r["policy_id"] for r in rows} == {"learner"}  # the judge's replies are not asked for


def test_best_worst_pairs_the_best_rated_reply_over_the_worst_and_counts_the_rule_judges_view():
    ratings = {GOOD: "111", "damn, it is sad.": "110", "it is grim.": "011"}
    gen = rule_task_generator(policy(ratings), TASK_CFG, 40)
    scored = Verifier(decode, task=gen.task, self_judged=True).training_turns(gen.task_play(3))
    buf = ReplayBuffer(BufferConfig(min_size=1, max_staleness=0), builder=BuilderConfig(rows="best_worst"))
    assert buf.add(scored) == 3  # one pair per prompt
    for p in buf.sample(3, learner_version=0).to_pylist():
        assert p["label"] == "dpo" and p["response_text"] == GOOD and p["rejected_text"] == "damn, it is sad."
    assert buf.counts["pairs_rules_decided"] == 3 and buf.counts["pairs_rules_agree"] == 3


def test_best_worst_takes_the_first_best_and_first_worst_and_drops_ties():
    rows = [
        sample("g", 0.2, "a", scores={RULES: 0.5}),
        sample("g", 0.8, "b", scores={RULES: 0.1}),
        sample("g", 0.2, "c"),
        sample("g", 0.8, "d", scores={RULES: 0.9}),
    ]
    best, worst = best_worst(rows)
    assert (best["response_text"], worst["response_text"]) == ("b", "a")
    assert rules_agreement(best, worst) == (1, 0)  # the rule judge prefers "a"
    assert rules_agreement(rows[3], rows[0]) == (1, 1) and rules_agreement(rows[1], rows[2]) == (0, 0)
    assert best_worst([sample("g", 0.5, "a"), sample("g", 0.5, "b")]) is None  # equal ratings
    assert best_worst([sample("g", 0.9, "a"), sample("g", 0.1, "a")]) is None  # one reply
    assert best_worst([sample("g", 0.9, "a"), sample("g", 0.1, "b", trainable=False)]) is None
    admitted, _, counts = build(
        schema.from_rows([*rows, sample("h", 0.5, "x"), sample("h", 0.5, "y")]),
        BuilderConfig(rows="best_worst"),
    )
    assert admitted.num_rows == 1 and counts["pairs_dropped"] == 1
    assert counts["pairs_rules_decided"] == 1 and counts["pairs_rules_agree"] == 0


def test_a_held_out_evaluation_measures_the_judges_agreement_with_the_rules():
    honest = {GOOD: "111", "damn, it is sad.": "110", "it is grim.": "011"}  # orders them as the rules do
    result = rule_task_generator(policy(honest), TASK_CFG, 40).evaluate_task()
    assert result["judge_rated"] == 1.0 and result["judge_decided"] > 0 and result["judge_agreement"] == 1.0
    backwards = {GOOD: "110", "damn, it is sad.": "111", "it is grim.": "101"}
    result = rule_task_generator(policy(backwards), TASK_CFG, 40).evaluate_task()
    assert result["judge_decided"] > 0 and result["judge_agreement"] == 0.0


# ---- the config's checks -----------------------------------------------------------------


def test_self_reward_config_loads_and_its_checks_name_the_field():
    cfg = load_config("configs/self_reward.yaml")
    assert cfg.task.judge == "self" and cfg.builder.rows == "best_worst" and cfg.sft.judge_examples > 0
    for override, match in [
        ("sft.judge_examples=0", "sft.judge_examples: task.judge self needs the judge role taught first"),
        ("task.judge_samples=0", "task.judge_samples: must be > 0"),
        (
            "learner.reference=false",
            "learner.reference: builder.rows best_worst trains pairs against a reference",
        ),
        ("task.samples_per_prompt=1", "task.samples_per_prompt: builder.rows best_worst pairs"),
        ("model.max_model_len=100", "model.max_model_len: a judge prompt with the longest reply takes up to"),
        ("task.judge=rules", "sft.judge_examples: teaches the judge role of task.judge self"),
        ("task.judge_samples=3", "task.judge_samples: greedy verdicts (task.judge_temperature 0) repeat"),
        ("task.judge_temperature=-1", "task.judge_temperature: must be >= 0"),
        ("sft.judge_replay=1.0", "sft.judge_replay: must be in [0, 1)"),
        ("task.judge=oracle", "task.judge: "),
        ("league.enabled=false", "task.judge_weights: snapshot judges with the newest league"),
        (
            "task.judge_weights=current",
            "league.enabled: a task run's league holds the snapshots that compete",
        ),
    ]:
        with pytest.raises(ConfigError, match=re.escape(match)):
            load_config("configs/self_reward.yaml", [override])
    assert cfg.task.judge_weights == "snapshot" and cfg.league.enabled
    current = load_config("configs/self_reward.yaml", ["task.judge_weights=current", "league.enabled=false"])
    assert current.task.judge_weights == "current"
    with pytest.raises(ConfigError, match=re.escape("task.judge_weights: snapshot judges")):
        load_config(
            "configs/self_reward.yaml",
            ["task.judge=rules", "sft.judge_examples=0", "sft.judge_replay=0"],
        )
    with pytest.raises(
        ConfigError, match="task.judge: self rates on a constitution's scale; task arithmetic"
    ):
        load_config(
            None,
            [
                "task.name=arithmetic",
                "task.judge=self",
                "sft.steps=10",
                "sft.judge_examples=10",
                "sft.examples=300",
            ],
        )


def test_the_rule_judges_agreement_on_training_pairs_is_logged_since_the_last_log():
    counts = {**dict.fromkeys(BUILDER_COUNTS, 0), "filled_from_reserve": 0, "reserve_dropped": 0}
    before = {**counts, "groups": 4, "samples": 16, "pairs_rules_decided": 10, "pairs_rules_agree": 9}
    now = {**counts, "groups": 8, "samples": 32, "pairs_rules_decided": 14, "pairs_rules_agree": 10}
    metrics = builder_metrics(now, before)
    assert metrics["task/pairs_rules_agreement"] == 0.25  # (10 - 9) / (14 - 10)
    assert metrics["task/pairs_rules_decided"] == 14  # the totals too
    assert "task/pairs_rules_agreement" not in builder_metrics(now, now | {"groups": 7})


def test_after_the_supervised_stage_a_share_of_every_batch_rehearses_the_judge_role():
    task = make_task("describe", principles=PRINCIPLES)
    judge = judge_examples(task, lambda text, special: [ord(c) for c in text], 2, n=6, seed=0, run_id="r")
    buf = ReplayBuffer(BufferConfig(min_size=1, max_staleness=0), builder=BuilderConfig(rows="best_worst"))
    buf.set_replay(judge, 0.25)
    buf.start_sft(judge)  # the stage itself hands out its labelled set alone
    assert buf.sample(4, learner_version=0).num_rows == 4 and buf.counts["replay_sampled"] == 0
    buf.end_sft()
    gen = rule_task_generator(policy({GOOD: "111", "damn, it is sad.": "110"}), TASK_CFG, 40)
    buf.add(Verifier(decode, task=gen.task, self_judged=True).training_turns(gen.task_play(8)))
    seen = []
    for _ in range(3):  # 6 judge rows, 2 a batch: every row once in 3 batches (one epoch)
        batch = buf.sample(8, learner_version=0).to_pylist()
        assert [r["label"] for r in batch] == ["dpo"] * 6 + ["sft"] * 2
        seen += [r["traj_id"] for r in batch[6:]]
    assert sorted(seen) == sorted(judge["traj_id"].to_pylist()) and buf.counts["replay_sampled"] == 6
    with pytest.raises(ValueError, match="sft.judge_replay: must be in"):
        buf.set_replay(judge, 1.0)
