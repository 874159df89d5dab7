"""TextArena games run through the same generator loop and verifier as the built-in ones,
on a real vLLM engine. TextArena prompts are hundreds of characters, so the model here has
a long context."""

from __future__ import annotations

import pytest

from actors.generator import Generator, Match
from actors.verifier import Verifier
from selfplay.config import load_config
from selfplay.league import LEARNER
from selfplay.model import create_default_model

pytestmark = pytest.mark.integration

GAMES = ["textarena:TicTacToe-v0", "textarena:KuhnPoker-v0"]


@pytest.fixture(scope="module")
def long_context_generator(tmp_path_factory):
    model = str(create_default_model(tmp_path_factory.mktemp("long"), preset="1m", max_positions=4096))
    cfg = load_config(
        None, ["generator.max_response_tokens=8", "model.max_model_len=4096", "generator.enforce_eager=true"]
    )
    gen = Generator.from_model("g", "t", {g: 1.0 for g in GAMES}, model, cfg.model, cfg.generator, 0)
    yield gen, model
    gen.close()


def test_textarena_games_are_played_and_verified(long_context_generator):
    gen, model = long_context_generator
    table = gen.play([Match(g, (LEARNER, LEARNER)) for g in GAMES for _ in range(4)], temperature=1.0)
    rows = table.to_pylist()
    assert {r["game"] for r in rows} == set(GAMES)
    assert all(len(r["prompt_ids"]) > 400 and 0 < len(r["response_ids"]) <= 8 for r in rows)
    verifier = Verifier.for_model(model)
    assert verifier.verify(table).num_rows == len(rows)  # every game replays to the same outcome
    assert verifier.rejected == {}


def test_a_game_whose_prompt_outgrows_the_context_ends_counted_and_play_goes_on(long_context_generator):
    gen, _ = long_context_generator
    engine = gen.engines[LEARNER]
    engine.max_model_len = 64  # as if the model had a 64-token context (vLLM would refuse the prompt)
    before = gen.counts["too_long"]
    try:
        table = gen.play([Match(GAMES[0], (LEARNER, LEARNER))], temperature=1.0)
    finally:
        engine.max_model_len = 4096
    assert table.num_rows == 0 and gen.counts["too_long"] == before + 1  # nothing half-played handed on
    assert gen.play([Match(GAMES[0], (LEARNER, LEARNER))], temperature=1.0).num_rows > 0
