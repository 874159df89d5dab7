"""The league end to end on a real local Ray with real vLLM engines: snapshots are
promoted, opponent engines receive them through the broadcast path with checksums, Elo
moves, and the league survives a resume."""

from __future__ import annotations

import dataclasses
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from selfplay import driver
from selfplay.config import LeagueConfig
from selfplay.league import DEFAULT_RATING, LeagueState
from selfplay.weights import export_checkpoint

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def league_run(ray_session, small_cfg, tmp_path_factory):
    cfg = dataclasses.replace(
        small_cfg,
        games={"tictactoe": 1.0, "kuhn": 1.0, "negotiation": 1.0},
        total_steps=4,
        log_every=2,
        checkpoint_every=2,
        out_dir=str(tmp_path_factory.mktemp("runs")),
        generator=dataclasses.replace(small_cfg.generator, max_response_tokens=3, skill_prompts=True),
        eval=dataclasses.replace(small_cfg.eval, every_steps=4, games=2),
        league=LeagueConfig(
            enabled=True,
            promote_every=2,
            promote_games=2,
            promote_threshold=0.0,
            self_play_fraction=0.25,
            max_live_opponents=1,
        ),
    )  # one engine: members swap in
    return driver.train(cfg)


def league_at(checkpoint) -> LeagueState:
    return LeagueState.load(checkpoint / "league.json")


def test_snapshots_are_promoted_and_played_with_the_weights_they_were_saved_with(league_run):
    last = driver.latest_checkpoint(league_run)
    state = league_at(last)
    # snap-0 is the initial policy; threshold 0 promotes at every check (steps 2 and 4).
    assert [(m.id, m.step) for m in state.members] == [("snap-0", 0), ("snap-1", 2), ("snap-2", 4)]
    for m in state.members:  # the checkpoint on disk is what the league broadcast
        assert export_checkpoint(m.path, "bfloat16")[1] == m.checksum
    turns = pq.read_table(last / "buffer.parquet").to_pylist()
    versions = {m.id: m.version for m in state.members}
    played = {(t["opponent_id"], t["opponent_version"]) for t in turns if t["opponent_id"] in versions}
    assert played and all(versions[member] == v for member, v in played)
    assert {t["game"] for t in turns} == {"tictactoe", "kuhn", "negotiation"}


def test_elo_moves_with_every_league_game(league_run):
    state = league_at(driver.latest_checkpoint(league_run))
    w, d, l = state.head_to_head("learner", "snap-0")
    assert w + d + l > 0 and state.games_played >= w + d + l
    assert state.learner_rating != DEFAULT_RATING
    assert state.member("snap-0").rating != DEFAULT_RATING
    assert sum(1 for _, pid, _ in state.rating_history if pid == "learner") > 1
    metrics = {m["name"] for m in pq.read_table(league_run / "metrics.parquet").to_pylist()}
    assert {
        "league/learner_elo",
        "league/elo/snap-0",
        "league/vs_previous_score",
        "eval/kuhn/exploitability",
        "eval/negotiation/greedy/return",
        "snapshot/snap-1/tictactoe/minimax/non_loss",
        "distinct_1",
    } <= metrics


def test_league_command_prints_members_and_head_to_head(league_run):
    out = subprocess.run(
        [sys.executable, "-m", "selfplay.cli", "league", str(league_run)],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert "snap-2" in out.stdout and "head-to-head" in out.stdout


def test_resume_restores_the_league(league_run):
    before = league_at(driver.latest_checkpoint(league_run))
    resumed = driver.resume_config(league_run, ["total_steps=6"])
    driver.train(resumed, resume_dir=league_run)
    after = league_at(driver.latest_checkpoint(league_run))
    assert [m.id for m in after.members][:3] == [m.id for m in before.members]
    assert after.members[3].id == "snap-3" and after.members[3].step == 6
    assert after.games_played > before.games_played
    assert after.rating_history[: len(before.rating_history)] == before.rating_history


def test_skill_tokens_prefix_the_prompts(league_run):
    turns = pq.read_table(driver.latest_checkpoint(league_run) / "buffer.parquet").to_pylist()
    skill_ids = {3, 4, 5}  # <novice>, <intermediate>, <expert> in the default tokenizer
    assert all(t["prompt_ids"][1] in skill_ids for t in turns if t["prompt_ids"])


def test_an_opponent_engine_refuses_weights_whose_checksum_does_not_match(ray_session, generator, tiny_model):
    import torch

    from actors.generator import WeightMismatch
    from actors.league import LeagueActor

    ray = ray_session
    league = LeagueActor.remote(LeagueConfig(enabled=True), 0, "test", "bfloat16")
    blob, checksum = export_checkpoint(tiny_model, torch.bfloat16)
    member = {"version": 3, "step": 0, "path": tiny_model}
    ray.get(league.add_member.remote({"id": "forged", "checksum": "0" * 64, **member}, blob))
    ray.get(league.add_member.remote({"id": "honest", "checksum": checksum, **member}, blob))
    with pytest.raises(WeightMismatch, match="forged"):
        ray.get(generator.head_to_head.remote(league, "forged", 1))
    per_game = ray.get(generator.head_to_head.remote(league, "honest", 1))
    assert per_game["tictactoe"]["games"] == 2
    assert "honest" in ray.get(generator.stats.remote())["members"]
    ray.kill(league)
