"""Competitive self-play -> DPO without Ray or a model: the generator asks the policy and a
league snapshot the same prompts, the verifier scores both sides with the constitution,
and the builder makes the judge's winner chosen and its loser rejected, dropping ties; a
task match between the policy and a member is judged in both orders; the config's checks."""

from __future__ import annotations

import pytest

from actors.buffer import ReplayBuffer
from actors.generator import Generator
from actors.verifier import Verifier
from selfplay import schema
from selfplay.builder import build, compete_pairs
from selfplay.config import BufferConfig, BuilderConfig, ConfigError, GeneratorConfig, TaskConfig, load_config
from tests.engines import EngineMaker, RuleEngine, decode

PRINCIPLES = [{"name": "sentiment"}, {"name": "mentions"}, {"name": "no_profanity", "hard": True}]
TASK_CFG = TaskConfig(name="describe", principles=PRINCIPLES, samples_per_prompt=2, versus="snapshot")


def good(prompt: str) -> str:
    subject, place, time = prompt.rstrip(":").split(", ")
    return f"the {subject} in the {place} at {time} is lovely."


def bad(prompt: str) -> str:
    return "damn, it is sad."


def generator(policy=good, member=bad) -> Generator:
    gen = Generator(
        "gen-0",
        "run-0",
        {"tictactoe": 1.0},
        RuleEngine(rule=policy),
        EngineMaker(rule=member),
        GeneratorConfig(max_response_tokens=128),
        seed=0,
        task_cfg=TASK_CFG,
    )
    gen.add_opponent("snap-0", "/snapshots/0")
    return gen


def test_the_policy_and_the_snapshot_answer_each_prompt_in_one_group():
    table = generator().task_play(3, opponent="snap-0")
    rows = table.to_pylist()
    assert len(rows) == 3 * 2 * 2 and len({r["group_id"] for r in rows}) == 3
    ours = [r for r in rows if r["trainable"]]
    theirs = [r for r in rows if not r["trainable"]]
    assert len(ours) == len(theirs) == 6
    assert {r["policy_id"] for r in ours} == {"learner"} and {r["opponent_id"] for r in ours} == {"snap-0"}
    assert {r["policy_id"] for r in theirs} == {"snap-0"} and {r["opponent_id"] for r in theirs} == {
        "learner"
    }
    assert {r["response_text"] for r in theirs} == {"damn, it is sad."}


def test_the_verifier_forwards_both_sides_and_the_buffer_keeps_only_the_judged_pairs():
    gen = generator()
    table = gen.task_play(4, opponent="snap-0")
    scored = Verifier(decode, task=gen.task).training_turns(table)
    assert scored.num_rows == 16  # the snapshot's replies go on: the builder compares them
    buf = ReplayBuffer(BufferConfig(min_size=1, max_staleness=0), builder=BuilderConfig(rows="compete"))
    kept = buf.add(scored)
    assert kept == 8  # one pair per policy sample: the good reply beats the cursed one every time
    pairs = buf.sample(8, learner_version=0).to_pylist()
    for p in pairs:
        assert p["label"] == "dpo" and p["policy_id"] == "learner" and p["trainable"]
        assert p["rejected_text"] == "damn, it is sad." and p["response_text"].endswith("is lovely.")
        assert p["rejected_ids"] == [ord(c) for c in "damn, it is sad."]


def row(text: str, reward: float, trainable: bool, ids=None) -> dict:
    return {
        "group_id": "g",
        "trainable": trainable,
        "response_text": text,
        "response_ids": ids or [ord(c) for c in text],
        "reward": reward,
        "scores": {"total": reward},
        "policy_version": 3 if trainable else 1,
    }


def test_compete_pairs_take_the_winner_either_side_and_drop_ties_and_identical_replies():
    rows = [
        row("mine wins", 0.9, True),
        row("mine loses", 0.2, True),
        row("tied", 0.5, True),
        row("same", 0.9, True),
        row("theirs loses", 0.1, False),
        row("theirs wins", 0.8, False),
        row("tied too", 0.5, False),
        row("same", 0.1, False),  # identical text: never labelled, whatever the scores say
    ]
    pairs = compete_pairs(rows)
    assert [(p["response_text"], p["rejected_text"]) for p in pairs] == [
        ("mine wins", "theirs loses"),
        ("theirs wins", "mine loses"),
    ]
    assert pairs[1]["response_ids"] == [ord(c) for c in "theirs wins"] and pairs[1]["reward"] == 0.8
    assert all(
        p["policy_version"] == 3 and p["behaviour_logprobs"] == [0.0] * len(p["response_ids"]) for p in pairs
    )
    with pytest.raises(ValueError, match="holds 2 policy samples and 1 snapshot samples"):
        compete_pairs(rows[:2] + rows[4:5])


def test_the_builder_counts_the_pairs_it_dropped():
    gen = generator(member=good)  # the snapshot answers as the policy does: every pair ties
    table = Verifier(decode, task=gen.task).training_turns(gen.task_play(2, opponent="snap-0"))
    admitted, _, counts = build(table, BuilderConfig(rows="compete"))
    assert admitted.num_rows == 0 and counts["pairs_dropped"] == 4 and counts["groups"] == 2
    assert schema.check(admitted).num_rows == 0


def test_a_task_match_is_judged_greedy_on_held_out_prompts():
    gen = generator()
    summary, results = gen.task_match("snap-0", 20)
    s = summary["describe"]
    assert s["wdl"] == [20, 0, 0] and s["score"] == 1.0 and s["games"] == 20
    assert s["member_mean_total"] == 0.0 and s["mean_total"] > 0.8
    assert results == [("describe", "snap-0", 1.0)] * 20
    held_out = {p.prompt for p in gen.task.held_out(20)}
    policy_calls = gen.engines["learner"].calls
    assert {*policy_calls[-1]["prompts"]} == held_out and policy_calls[-1]["temperature"] == 0.0
    even, _ = generator(member=good).task_match("snap-0", 10)
    assert even["describe"]["wdl"] == [0, 10, 0] and even["describe"]["score"] == 0.5


COMPETE = [
    "task.name=describe",
    "task.versus=snapshot",
    "builder.rows=compete",
    "league.enabled=true",
    "learner.advantage=group",
    "learner.reference=true",
    "sft.steps=10",
    "sft.examples=512",
]


def principles_yaml(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("task:\n  principles:\n    - {name: sentiment}\n    - {name: no_profanity, hard: true}\n")
    return path


def test_compete_config_checks_name_the_field(tmp_path):
    path = principles_yaml(tmp_path)
    cfg = load_config(
        path, COMPETE + ["league.final_match=500", "acceptance.describe/vs_first/score='>= 0.75'"]
    )
    assert cfg.builder.rows == "compete" and cfg.task.principles[1]["hard"]
    for drop, match in [
        ("task.versus=snapshot", "competitive self-play is builder.rows compete with task.versus snapshot"),
        ("league.enabled=true", "competitive self-play is builder.rows compete"),
        ("learner.reference=true", "learner.reference"),
        ("sft.steps=10", "sft.steps: a task run's league starts from the supervised policy"),
    ]:
        with pytest.raises(ConfigError, match=match):
            load_config(path, [o for o in COMPETE if o != drop])
    with pytest.raises(ConfigError, match=r"describe/vs_first/FIELD needs league.final_match > 0\)$"):
        load_config(path, COMPETE + ["acceptance.describe/vs_first/score='>= 0.75'"])  # no final match
    with pytest.raises(ConfigError, match="league.promote_games: describe: held_out"):
        load_config(path, COMPETE + ["league.promote_games=100000"])
    with pytest.raises(ConfigError, match="task.principles: the describe task has no checker"):
        load_config(None, COMPETE)


def test_admitted_pairs_are_written_as_prompt_chosen_rejected_parquet(tmp_path):
    import pyarrow.parquet as pq

    from actors.buffer import PreferenceLog

    gen = generator()
    log = PreferenceLog(tmp_path / "preferences", decode, "compete", flush_rows=10**6)
    buf = ReplayBuffer(BufferConfig(min_size=1), builder=BuilderConfig(rows="compete"), preferences=log)
    buf.add(Verifier(decode, task=gen.task).training_turns(gen.task_play(3, opponent="snap-0")))
    assert not list((tmp_path / "preferences").iterdir())  # pending until a flush
    buf.save(tmp_path)  # a checkpoint flushes them
    buf.add(Verifier(decode, task=gen.task).training_turns(gen.task_play(2, opponent="snap-0")))
    log.flush()
    parts = sorted((tmp_path / "preferences").glob("part-*.parquet"))
    assert [p.name for p in parts] == ["part-000000.parquet", "part-000001.parquet"]
    table = pq.read_table(tmp_path / "preferences")
    assert table.num_rows == 10 and table.schema.names[:3] == ["prompt", "chosen", "rejected"]
    for r in table.to_pylist():
        subject, place, time = r["prompt"].rstrip(":").split(", ")
        assert r["chosen"] == good(r["prompt"]) and r["rejected"] == "damn, it is sad."
        assert r["method"] == "compete" and r["opponent_id"] == "snap-0" and r["task"] == "describe"
        assert r["reference_id"] == f"describe:{subject}|{place}|{time}"
        assert dict(r["chosen_scores"])["no_profanity"] == 1.0
    assert PreferenceLog(tmp_path / "preferences", decode, "compete").parts == 2  # a resumed run appends
    # ...after the parts of the checkpoint it resumes from: the second part was written past
    # the checkpoint (buf.save above) by a session that went on; its steps are taken again
    resumed_log = PreferenceLog(tmp_path / "preferences", decode, "compete", flush_rows=10**6)
    resumed = ReplayBuffer(
        BufferConfig(min_size=1), builder=BuilderConfig(rows="compete"), preferences=resumed_log
    )
    resumed.load(tmp_path)
    assert [p.name for p in sorted((tmp_path / "preferences").glob("part-*.parquet"))] == [
        "part-000000.parquet"
    ]
    resumed.add(Verifier(decode, task=gen.task).training_turns(gen.task_play(2, opponent="snap-0")))
    resumed_log.flush()
    assert resumed_log.parts == 2 and pq.read_table(tmp_path / "preferences").num_rows == 10


def test_a_judged_tasks_evaluation_reports_its_mean_score():
    result = generator().evaluate_task()
    assert result["accuracy"] == 0.0  # no reply of a judged task is ever "right"
    # (sentiment + mentions + no_profanity) / 3: "lovely" (VADER 0.5859), every word named, clean
    assert result["score"] == pytest.approx(((1 + 0.5859) / 2 + 1 + 1) / 3, abs=1e-4)
