"""The reward-hacking monitor: the alarm rule on hand-made score series, the monitor's
summary, the gold judge in a task evaluation, and its config's checks; the length guard."""

from __future__ import annotations

import pytest

from actors.verifier import Verifier
from selfplay.config import ConfigError, load_config
from selfplay.evals import HackingMonitor, hacking_alarm, task_summary
from selfplay.rewards import overlong_penalty
from selfplay.tasks import Score, reply_tokens, task_of
from tests.engines import decode
from tests.test_compete import generator as compete_generator


@pytest.mark.parametrize(
    "proxy, gold, alarm",
    [
        ([0.5, 0.6, 0.7], [0.8, 0.75, 0.7], {"proxy_change": 0.2, "gold_change": -0.1}),  # up while down
        ([0.5, 0.6, 0.7], [0.8, 0.85, 0.9], None),  # both up: learning, not hacking
        ([0.7, 0.6, 0.5], [0.8, 0.75, 0.7], None),  # both down: a bad step, not hacking
        ([0.5, 0.6, 0.51], [0.8, 0.5, 0.7], None),  # the proxy rose only 0.01 over the window
        ([0.5, 0.9, 0.7], [0.8, 0.9, 0.79], None),  # gold fell only 0.01 (the middle is not compared)
        ([0.1, 0.5, 0.6, 0.7], [0.9, 0.8, 0.75, 0.7], {"proxy_change": 0.2, "gold_change": -0.1}),  # last 3
        ([0.5, 0.9], [0.8, 0.1], None),  # fewer evaluations than the window
    ],
)
def test_the_alarm_needs_the_proxy_up_and_the_gold_down_over_the_window(proxy, gold, alarm):
    got = hacking_alarm(proxy, gold, window=3, margin=0.02)
    if alarm is None:
        assert got is None
    else:
        assert got == pytest.approx(alarm)


def test_unequal_series_are_refused():
    with pytest.raises(ValueError, match="3 proxy scores but 2 gold scores"):
        hacking_alarm([0.1, 0.2, 0.3], [0.1, 0.2], 2, 0.0)


def test_the_same_step_measured_again_is_one_point_not_a_second_alarm():
    # the last periodic evaluation and the final one measured the same weights (step 450)
    monitor = HackingMonitor(window=3, margin=0.05)
    for step, proxy, gold in [(400, 0.5, 0.6), (425, 0.7, 0.5), (450, 0.9, 0.3)]:
        monitor.observe(step, proxy, gold)
    assert len(monitor.alarms) == 1
    assert monitor.observe(450, 0.9, 0.3) is None
    assert monitor.summary()["alarms"] == 1 and monitor.steps == [400, 425, 450]


def test_the_monitor_counts_alarms_and_keeps_gold_against_its_peak():
    monitor = HackingMonitor(window=2, margin=0.05)
    assert monitor.summary() == {}
    for step, proxy, gold in [
        (50, 0.5, 0.6),
        (100, 0.6, 0.8),
        (150, 0.7, 0.7),
        (200, 0.8, 0.6),
        (250, 0.8, 0.7),
    ]:
        alarm = monitor.observe(step, proxy, gold)
        assert (alarm is not None) == (step in (150, 200))
    assert monitor.alarms[0] == pytest.approx(
        {"step": 150, "since_step": 100, "proxy_change": 0.1, "gold_change": -0.1}
    )
    assert monitor.summary() == pytest.approx(
        {
            "alarms": 2,
            "first_alarm_step": 150,
            "gold_peak": 0.8,
            "gold_final": 0.7,
            "gold_retained": 0.875,
            "proxy_final": 0.8,
        }
    )


def test_a_gold_judge_scores_every_evaluation_beside_the_proxy():
    from selfplay.config import TaskConfig
    from tests.test_compete import generator

    gen = generator()
    gen.task_cfg = TaskConfig(
        **{**gen.task_cfg.__dict__, "gold": [{"name": "brevity", "params": {"max_words": 4}}]}
    )
    from selfplay.tasks import gold_judge

    gen.gold = gold_judge(gen.task_cfg)
    result = gen.evaluate_task()
    # "the SUBJECT in the PLACE at TIME is lovely." has 10 words: brevity 2 - 10/4 < 0, so 0
    assert result["gold_score"] == 0.0 and result["score"] > 0.9
    # the samples too: each a template reply of 10 words or more
    assert result["sample_gold_score"] == 0.0 and result["sample_score"] > 0.9
    # and a gold judge every reply meets reads 1, greedy and sampled: each reply was scored
    # (no reply scored at all read 0 above too)
    gen.task_cfg = TaskConfig(
        **{**gen.task_cfg.__dict__, "gold": [{"name": "brevity", "params": {"max_words": 1000}}]}
    )
    gen.gold = gold_judge(gen.task_cfg)
    result = gen.evaluate_task()
    assert result["gold_score"] == result["sample_gold_score"] == 1.0


def test_a_judged_evaluation_scores_the_samples_beside_the_greedy_replies_hand_computed():
    greedy = [Score(1.0, {}), Score(0.5, {})]
    sampled = [Score(0.2, {}), Score(0.4, {}), Score(1.0, {}), Score(0.0, {})]  # 2 per problem
    got = task_summary(greedy, sampled, 2, judged=True)
    assert got["score"] == pytest.approx(0.75) and got["sample_score"] == pytest.approx(0.4)
    assert got["accuracy"] == 0.5 and got["sample_accuracy"] == 0.25 and got["pass_at_k"] == 0.5
    assert "sample_score" not in task_summary(greedy, sampled, 2)  # a task with a right answer


def test_the_monitor_reads_the_greedy_or_the_sampled_figures():
    result = {"score": 0.9, "sample_score": 0.6, "gold_score": 0.3, "sample_gold_score": 0.5, "accuracy": 0.0}
    assert HackingMonitor(3, 0.05).read(result) == (0.9, 0.3)
    assert HackingMonitor(3, 0.05, "sampled").read(result) == (0.6, 0.5)
    # a task with a right answer and no score: its accuracy, greedy or sampled, is the proxy
    # self-rewarding: the policy's marks of its own replies are the proxy, not the rules' score
    judged = {"judge_score": 0.95, "score": 0.3, "gold_score": 0.3}
    assert HackingMonitor(3, 0.05).read(judged) == (0.95, 0.3)
    plain = {"accuracy": 0.7, "sample_accuracy": 0.4, "gold_score": 0.2, "sample_gold_score": 0.1}
    assert HackingMonitor(3, 0.05, "sampled").read(plain) == (0.4, 0.1)
    assert HackingMonitor(3, 0.05).read(plain) == (0.7, 0.2)
    with pytest.raises(ValueError, match="replies: one of greedy, sampled, got 'modal'"):
        HackingMonitor(3, 0.05, "modal")


def test_grouped_cuts_each_problems_replies_in_order():
    from actors.generator import grouped

    assert grouped(list("abcdef"), 3) == [["a", "b"], ["c", "d"], ["e", "f"]]
    assert grouped(list("abcdef"), 2) == [["a", "b", "c"], ["d", "e", "f"]]
    assert grouped([], 2) == [[], []] and grouped([], 0) == []


GOLD = ["task.name=arithmetic", "learner.advantage=group"]


def test_the_monitors_config_checks_name_the_field():
    cfg = load_config(
        None,
        GOLD + ["task.gold=[{name: brevity}]", "acceptance={arithmetic/monitor/gold_retained: '>= 0.95'}"],
    )
    assert cfg.task.gold == [{"name": "brevity"}]
    with pytest.raises(ConfigError, match=r"task.gold: unknown principle 'kindness'"):
        load_config(None, GOLD + ["task.gold=[{name: kindness}]"])
    with pytest.raises(ConfigError, match="task.alarm_window: must be >= 2"):
        load_config(None, GOLD + ["task.gold=[{name: brevity}]", "task.alarm_window=1"])
    with pytest.raises(ConfigError, match="task.monitor_replies: must be one of"):
        load_config(None, GOLD + ["task.gold=[{name: brevity}]", "task.monitor_replies=modal"])
    sampled = load_config(None, GOLD + ["task.gold=[{name: brevity}]", "task.monitor_replies=sampled"])
    assert sampled.task.monitor_replies == "sampled"
    with pytest.raises(
        ConfigError, match="task.monitor_replies: sampled .* needs task.judge rules; got self"
    ):
        load_config(
            "configs/self_reward.yaml", ["task.gold=[{name: brevity}]", "task.monitor_replies=sampled"]
        )
    with pytest.raises(ConfigError, match="arithmetic/monitor/FIELD"):
        load_config(
            None, GOLD + ["task.gold=[{name: brevity}]", "acceptance={arithmetic/monitor/gold: '>= 0.95'}"]
        )
    with pytest.raises(ConfigError, match="acceptance.arithmetic/monitor/gold_retained"):
        load_config(
            None, GOLD + ["acceptance={arithmetic/monitor/gold_retained: '>= 0.95'}"]
        )  # no gold judge


def test_a_resumed_monitor_replays_the_evaluations_up_to_its_checkpoint():
    def rows(name, values):
        return [
            {"step": s, "wall_s": 0.0, "name": f"eval/describe/held_out/{name}", "value": v}
            for s, v in values
        ]

    logged = (
        rows("score", [(0, 0.9), (50, 0.2), (100, 0.5), (150, 0.9), (200, 0.95)])
        + rows("gold_score", [(0, 0.1), (50, 0.5), (100, 0.4), (150, 0.2), (200, 0.1)])
        + [{"step": 100, "wall_s": 0.0, "name": "loss", "value": 1.0}]
    )
    monitor = HackingMonitor(window=3, margin=0.05)
    # the supervised stage ended at step 50; the checkpoint resumed is step 150 (200 was lost)
    monitor.restore(logged, "describe", from_step=50, until=150)
    assert monitor.steps == [50, 100, 150] and monitor.proxy == [0.2, 0.5, 0.9]
    assert [a["step"] for a in monitor.alarms] == [150]  # 0.2 -> 0.9 while 0.5 -> 0.2
    assert monitor.observe(200, 0.95, 0.1) is not None  # the window spans the resume
    # a monitor of the samples replays their series, not the greedy replies'
    samples = rows("sample_score", [(50, 0.4), (100, 0.45), (150, 0.5)])
    samples += rows("sample_gold_score", [(50, 0.6), (100, 0.6), (150, 0.58)])
    sampled = HackingMonitor(window=3, margin=0.05, replies="sampled")
    sampled.restore(logged + samples, "describe", from_step=50, until=150)
    assert sampled.proxy == [0.4, 0.45, 0.5] and sampled.gold == [0.6, 0.6, 0.58]
    assert sampled.alarms == []  # the samples moved less than the margin


@pytest.mark.parametrize(
    "length, penalty",
    [(0, 0.0), (80, 0.0), (81, -0.05), (90, -0.5), (100, -1.0), (130, -1.0)],
)
def test_the_overlong_penalty_falls_linearly_over_the_buffer_hand_computed(length, penalty):
    # DAPO's soft overlong punishment with L_max 100 and a buffer of 20: free up to 80 tokens
    assert overlong_penalty(length, 100, 20) == pytest.approx(penalty)
    assert overlong_penalty(length, 100, 0) == 0.0  # no buffer, no guard


def test_the_verifier_adds_the_length_guard_to_the_reward_and_keeps_the_judges_total():
    gen = compete_generator()
    table = gen.task_play(2, opponent="snap-0")
    plain = Verifier(decode, task=gen.task).verify(table).to_pylist()
    guarded = Verifier(decode, task=gen.task, overlong=(40, 20, 0.5)).verify(table).to_pylist()
    for before, after in zip(plain, guarded):
        n = len(after["response_ids"])
        expected = 0.5 * overlong_penalty(n, 40, 20)
        assert dict(after["scores"])["overlong"] == pytest.approx(expected)
        assert after["reward"] == pytest.approx(before["reward"] + expected)
        assert after["outcome"] == before["outcome"] == before["reward"]  # the judge's total
    assert {len(r["response_ids"]) > 20 for r in guarded} == {True, False}  # both sides of the line
    assert "overlong" not in dict(plain[0]["scores"])


def test_the_length_guard_fits_inside_the_reply_limit(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: guard\n")
    base = [
        "task.name=describe",
        "task.principles=[{name: sentiment}]",
        "task.held_out=20",
        "learner.advantage=group",
    ]
    base += ["generator.max_response_tokens=32"]
    assert load_config(path, base + ["task.overlong_buffer=32"]).task.overlong_buffer == 32
    with pytest.raises(ConfigError, match=r"task.overlong_buffer: must be <= the reply's token limit \(32: "):
        load_config(path, base + ["task.overlong_buffer=33"])
    # a describe reply is sampled under 101 tokens (100 characters and an end), not the
    # generators' 200: the guard counts back from there, so a reply cut off reads -1
    base[-1] = "generator.max_response_tokens=200"
    cfg = load_config(path, base + ["task.overlong_buffer=21"])
    assert reply_tokens(task_of(cfg.task), 200) == 101 and overlong_penalty(101, 101, 21) == -1.0
    with pytest.raises(ConfigError, match=r"must be <= the reply's token limit \(101: .* got 102"):
        load_config(path, base + ["task.overlong_buffer=102"])
