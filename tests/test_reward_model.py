"""The Bradley-Terry reward model: its labelled pairs, that training on them teaches it the
labeler's preference on held-out prompts, its saved directory as a judge's principle, and
its config's checks. (A run that trains one and judges by it: tests/test_driver.py.)"""

from __future__ import annotations

import math

import pytest

from selfplay import reward_model
from selfplay.config import ConfigError, RewardModelConfig, load_config
from selfplay.model import create_default_model
from selfplay.tasks import held_out_id, make_task
from selfplay.tasks.judges import Constitution

TASK = make_task("describe", principles=[{"name": "sentiment"}])
# prefers replies of at most 5 words, falling to 0 at 10: a preference of the reply alone
SHORT = Constitution.from_config([{"name": "brevity", "params": {"max_words": 5}}])


def test_pairs_follow_the_labeler_and_keep_train_and_held_out_prompts_apart():
    train, held_out, ties = reward_model.training_pairs(TASK, SHORT, 200, 50, seed=3)
    assert len(train) == 200 and 0 < len(held_out) <= 50 and ties > 0  # equal-length draws tie
    for pair in train + held_out:
        reference = pair.prompt.rstrip(":").replace(", ", "|")
        assert (
            SHORT.score(pair.prompt, pair.chosen, reference).total
            > SHORT.score(pair.prompt, pair.rejected, reference).total
        )
    ids = lambda pairs: {f"describe:{p.prompt.rstrip(':').replace(', ', '|')}" for p in pairs}  # noqa: E731
    assert not any(held_out_id(i, TASK.held_out_percent) for i in ids(train))
    assert all(held_out_id(i, TASK.held_out_percent) for i in ids(held_out))
    again = reward_model.training_pairs(TASK, SHORT, 200, 50, seed=3)
    assert again == (train, held_out, ties)  # a pure function of the seed
    assert reward_model.training_pairs(TASK, SHORT, 200, 50, seed=4)[0] != train


def test_a_labeler_that_never_decides_is_refused():
    never = Constitution.from_config(
        [{"name": "brevity", "params": {"max_words": 1000}}]
    )  # 1 for every reply
    with pytest.raises(ValueError, match="reward_model.labeler: .* were ties"):
        reward_model.training_pairs(TASK, never, 50, 10, seed=0)


@pytest.fixture(scope="module")
def trained(tmp_path_factory):
    """A reward model trained on 320 brevity-labelled pairs from a fresh 1M-parameter Llama."""
    init = create_default_model(tmp_path_factory.mktemp("init"), preset="1m", max_positions=160)
    train, held_out, ties = reward_model.training_pairs(TASK, SHORT, 320, 100, seed=0)
    out = tmp_path_factory.mktemp("rm") / "reward_model"
    info = reward_model.train(
        str(init),
        str(out),
        train,
        held_out,
        RewardModelConfig(epochs=2, lr=1e-3, batch_size=32, center_coef=0.01),
        seed=0,
        threads=2,
    )
    return out, info, held_out


def test_training_teaches_the_labelers_preference_on_held_out_prompts(trained):
    out, info, held_out = trained
    assert info["steps"] == 2 * 320 // 32 and info["train_pairs"] == 320
    assert info["held_out_accuracy"] >= 0.9 > info["held_out_accuracy_before"]
    assert reward_model.complete(out) == info  # reward_model.json: the figures
    assert not out.with_name(out.name + ".partial").exists()
    # the saved directory scores as it did when the figures were taken
    assert reward_model.loaded(str(out)).accuracy(held_out) == pytest.approx(info["held_out_accuracy"])


def test_the_saved_model_judges_as_a_principle(trained):
    out, _, _ = trained
    judge = Constitution.from_config([{"name": "reward_model", "params": {"path": str(out)}}])
    prompt, short, long = (
        "fox, meadow, dusk:",
        "the fox is calm.",
        "the fox in the meadow at dusk is very very very calm and kind.",
    )
    rewards = reward_model.loaded(str(out)).rewards([prompt, prompt], [short, long])
    score = judge.score(prompt, short, "fox|meadow|dusk")
    assert score.parts["reward_model"] == pytest.approx(1 / (1 + math.exp(-rewards[0])), rel=1e-5)
    assert rewards[0] > rewards[1]  # it learned brevity
    assert judge.score(prompt, long, "fox|meadow|dusk").total < score.total


def test_a_principle_or_directory_without_a_model_is_a_clear_error(tmp_path):
    with pytest.raises(ValueError, match="params.path names no reward model"):
        Constitution.from_config([{"name": "reward_model"}]).score("a, b, c:", "it is.", "a|b|c")
    with pytest.raises(FileNotFoundError, match="not a complete reward model directory"):
        reward_model.loaded(str(tmp_path))


def test_a_run_fills_in_its_reward_model_where_no_path_is_given():
    principles = [
        {"name": "reward_model"},
        {"name": "reward_model", "params": {"path": "/elsewhere"}},
        {"name": "brevity", "params": {"max_words": 3}},
    ]
    assert reward_model.judged_by(principles, "/run/reward_model") == [
        {"name": "reward_model", "params": {"path": "/run/reward_model"}},
        principles[1],
        principles[2],
    ]


RM_RUN = [
    "task.name=describe",
    "task.principles=[{name: reward_model}]",
    "task.held_out=20",
    "reward_model.labeler=[{name: brevity}]",
    "learner.advantage=group",
]


def test_config_checks_name_the_field(tmp_path):
    path = tmp_path / "c.yaml"
    path.write_text("name: rm\n")
    cfg = load_config(
        path, RM_RUN + ["reward_model.pairs=64", "acceptance.reward_model/held_out/accuracy='>= 0.8'"]
    )
    assert cfg.reward_model.pairs == 64
    with pytest.raises(ConfigError, match="task.principles.reward_model: params.path names no reward model"):
        load_config(path, RM_RUN)  # nothing trains one and no path is given
    with pytest.raises(
        ConfigError, match="reward_model.pairs: the run would train a reward model that nothing"
    ):
        load_config(
            path, RM_RUN[:1] + ["task.principles=[{name: brevity}]", *RM_RUN[2:], "reward_model.pairs=64"]
        )
    with pytest.raises(ConfigError, match="reward_model.labeler: list the principles"):
        load_config(path, RM_RUN + ["reward_model.pairs=64", "reward_model.labeler=[]"])
    with pytest.raises(ConfigError, match="reward_model.labeler: unknown principle 'kindness'"):
        load_config(path, RM_RUN + ["reward_model.pairs=64", "reward_model.labeler=[{name: kindness}]"])
    with pytest.raises(ConfigError, match="reward_model.held_out_pairs: describe: held_out"):
        load_config(path, RM_RUN + ["reward_model.pairs=64", "reward_model.held_out_pairs=100000"])
    with pytest.raises(ConfigError, match=r"reward_model.pairs: must be >= reward_model.batch_size \(32\)"):
        load_config(path, RM_RUN + ["reward_model.pairs=16"])
    with pytest.raises(ConfigError, match="and reward_model/held_out/accuracy"):
        load_config(path, RM_RUN + ["reward_model.pairs=64", "acceptance.x/y/z='>= 1'"])
