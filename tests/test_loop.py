"""The algorithm in one place (selfplay/loop.py), run for real in one process: the plain
generator on a rule-following engine that loads the learner's exported weights, the
rule verifier, the replay buffer and the learner on a tiny model."""

from __future__ import annotations

import random

import pytest
from safetensors.torch import load as load_safetensors

from actors.buffer import ReplayBuffer
from actors.generator import Generator
from learner.learner import Learner
from selfplay import loop
from selfplay.config import load_config
from selfplay.model import create_default_model
from selfplay.weights import state_checksum
from tests.engines import EngineMaker, RuleEngine, decode, encode


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return str(create_default_model(tmp_path_factory.mktemp("m"), preset="1m", max_positions=64))


class LearnerWeightsEngine(RuleEngine):
    """Plays a random free cell (so games end differently and advantages are not all zero),
    loads the learner's safetensors export and echoes the checksum of what arrived, as the
    vLLM worker extension does; `corrupt` changes one tensor on the way in."""

    def __init__(self, corrupt: bool = False):
        rng = random.Random(0)
        super().__init__(
            rule=lambda observation: rng.choice([c for c in observation.split()[-1] if c.isdigit()])
        )
        self.corrupt = corrupt
        self.versions_loaded = 0

    def load_weights(self, blob: bytes) -> str:
        tensors = load_safetensors(blob)
        if self.corrupt:
            name = sorted(tensors)[0]
            tensors[name] = tensors[name] * 2
        self.versions_loaded += 1
        return state_checksum(tensors)


def make_parts(model_dir, engine, *overrides: str) -> tuple[loop.Parts, object]:
    cfg = load_config(
        None,
        [
            "learner.batch_size=16",
            "buffer.min_size=16",
            "generator.games_per_wave=8",
            "buffer.max_staleness=1",
            "learner.lr=1e-2",
            *overrides,
        ],
    )
    parts = loop.Parts(
        generator=Generator("generator-0", "test", cfg.games, engine, EngineMaker(), cfg.generator, cfg.seed),
        verifier=loop.game_verifier(cfg, decode, encode),
        buffer=ReplayBuffer(cfg.buffer, cfg.seed),
        learner=Learner(cfg.learner, cfg.model, model_dir, cfg.seed),
    )
    return parts, cfg


def test_each_iteration_trains_once_and_the_generator_plays_the_new_version(model_dir):
    engine = LearnerWeightsEngine()
    parts, cfg = make_parts(model_dir, engine)
    before = parts.learner.export()[1]
    metrics = loop.train(parts, cfg, 3)
    assert [m["step"] for m in metrics] == [1, 2, 3]
    assert parts.learner.version == parts.generator.version == engine.versions_loaded == 3
    assert parts.generator.checksum == parts.learner.export()[1] != before  # the weights moved and arrived
    assert parts.verifier.stats()["accepted"] == parts.generator.counts["games"] > 0
    assert all(m["staleness_max"] <= cfg.buffer.max_staleness for m in metrics)
    newest = parts.generator.self_play(2)
    assert set(newest["policy_version"].to_pylist()) == {3}


def test_games_shown_in_symmetric_views_are_replayed_in_them(model_dir):
    """generator.board_symmetries (tictactoe.yaml, `make bench`'s config): the loop's
    verifier replays each game in the view it was shown in; on the plain board every one
    was rejected and the loop generated waves for ever."""
    engine = LearnerWeightsEngine()
    parts, cfg = make_parts(model_dir, engine, "generator.board_symmetries=true", "games={tictactoe: 1.0}")
    parts.verifier.training_turns(parts.generator.self_play(8))  # one wave: a regression fails, not hangs
    assert parts.verifier.stats()["accepted"] == parts.generator.counts["games"] > 0


def test_an_engine_that_loads_other_weights_stops_the_loop(model_dir):
    parts, cfg = make_parts(model_dir, LearnerWeightsEngine(corrupt=True))
    with pytest.raises(loop.WeightsNotLoaded, match="the generator loaded weights"):
        loop.iteration(parts, cfg)
