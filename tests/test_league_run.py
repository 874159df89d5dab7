"""The league end to end on a real local Ray with real vLLM engines: snapshots are
promoted, opponent engines receive them through the broadcast path with checksums, Elo
moves, and the run (league, learner with its value head, metrics, best checkpoint)
survives a resume: 4 steps, then resumed to 6; Kuhn poker's average policy spans the resume."""

from __future__ import annotations

import dataclasses
import json
import math
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from selfplay import driver, schema
from selfplay.average import POLICIES
from selfplay.config import LeagueConfig
from selfplay.games import kuhn
from selfplay.league import DEFAULT_RATING, LeagueState
from selfplay.weights import export_checkpoint

pytestmark = pytest.mark.integration


FIRST, LAST = "step_0000004", "step_0000006"


@pytest.fixture(scope="module")
def league_run(ray_session, small_cfg, tmp_path_factory):
    """With the value head (GAE on whole games) and the weights' average; evaluated every 2
    steps; 4 steps, then its directory moves and it resumes there to 6."""
    cfg = dataclasses.replace(
        small_cfg,
        games={"tictactoe": 1.0, "kuhn": 1.0, "negotiation": 1.0},
        total_steps=4,
        log_every=2,
        checkpoint_every=2,
        out_dir=str(tmp_path_factory.mktemp("runs")),
        generator=dataclasses.replace(small_cfg.generator, max_response_tokens=3, skill_prompts=True),
        eval=dataclasses.replace(small_cfg.eval, every_steps=2, games=2),
        # the weights' moving average is the policy evaluated (learner.ema_decay)
        learner=dataclasses.replace(small_cfg.learner, advantage="gae", ema_decay=0.5),
        buffer=dataclasses.replace(small_cfg.buffer, whole_games=True),
        league=LeagueConfig(
            enabled=True,
            promote_every=2,
            promote_games=2,
            promote_threshold=0.0,
            self_play_fraction=0.25,
            max_live_opponents=1,
        ),  # one engine: members swap in
        acceptance={"tictactoe/random/non_loss": ">= 0.0"},  # ranks the best checkpoint
    )
    first = driver.train(cfg)
    assert driver.latest_checkpoint(first).name == FIRST
    run_dir = first.parent / "moved" / first.name  # resumed from elsewhere: nothing points back
    run_dir.parent.mkdir()
    first.rename(run_dir)
    resumed = driver.resume_config(run_dir, ["total_steps=6"])
    assert driver.train(resumed, resume_dir=run_dir) == run_dir
    return run_dir


def league_at(checkpoint) -> LeagueState:
    return LeagueState.load(checkpoint / "league.json")


def test_resume_continues_at_the_same_step(league_run):
    state = json.loads((league_run / "checkpoints" / FIRST / "driver_state.json").read_text())
    assert (state["step"], state["version"]) == (4, 4)
    last = driver.latest_checkpoint(league_run)
    assert last.name == LAST
    learner_state = json.loads((last / "learner_state.json").read_text())
    assert (learner_state["step"], learner_state["version"]) == (6, 6)
    assert (last / "value_head.safetensors").exists()
    metrics = pq.read_table(league_run / "metrics.parquet").to_pylist()
    assert [m["step"] for m in metrics if m["name"] == "loss"] == [1, 2, 3, 4, 5, 6]  # each step once
    assert [m["step"] for m in metrics if m["name"] == "value_loss"] == [1, 2, 3, 4, 5, 6]
    assert {m["name"] for m in metrics} >= {
        "eval/tictactoe/random/win",
        "eval/tictactoe/minimax/non_loss",
        "tokens_per_s",
    }
    # every evaluation measured the weights of the step it is logged at (broadcast every step)
    versions = [(m["step"], m["value"]) for m in metrics if m["name"] == "eval/tictactoe/random/version"]
    assert {step for step, _ in versions} >= {0, 2, 4, 6} and all(
        step == version for step, version in versions
    )


def test_the_summary_balances_across_the_resume_and_keeps_the_best_checkpoint(league_run):
    summary = json.loads((league_run / "summary.json").read_text())
    assert set(summary) >= {"before", "after", "turns", "acceptance", "league"} and summary["steps"] == 6
    # the buffer's counts span the resume; whole games fill each batch
    assert summary["turns"]["trained"] >= 6 * 64
    assert summary["turns"]["generated"] >= summary["turns"]["forwarded"] > 0
    assert 0 < summary["busy"]["learner"] <= 1 and 0 <= summary["busy"]["generators"] <= 1
    assert summary["learner_mfu"] > 0
    assert isinstance(summary["learner_peak_tflops"], float)  # learner.peak_tflops auto: measured
    assert 0 < summary["learner_peak_tflops"] < 1e4
    assert summary["faults"] == {"generators_failed": [], "learner_dropped": []}
    # the best checkpoint (the first evaluation at least): a model directory, evaluated afresh
    best = json.loads((league_run / "best" / "best.json").read_text())
    assert summary["best"]["step"] == best["step"] and "tictactoe/random" in summary["best"]["after"]
    assert set(summary["acceptance"]) == {
        "tictactoe/random/non_loss",
        "best/tictactoe/random/non_loss",
        "final_minus_best/tictactoe/random/non_loss",
    }
    assert (league_run / "best" / "model.safetensors").exists()
    assert (league_run / "best" / "config.json").exists()


def test_evaluations_measure_the_weights_average_each_checkpoint_keeps(league_run, engine_dtype):
    summary = json.loads((league_run / "summary.json").read_text())
    assert summary["policy"] == {"weights": "averaged", "ema_decay": 0.5}
    for step in ("step_0000002", FIRST, LAST):  # the average beside the trained weights, as a model
        ckpt = league_run / "checkpoints" / step
        assert (ckpt / "ema.safetensors").exists()
        averaged, trained = (export_checkpoint(str(ckpt / d), engine_dtype)[1] for d in ("averaged", "model"))
        assert averaged != trained
    # the best checkpoint holds the weights its evaluation measured: the average at its step
    best = json.loads((league_run / "best" / "best.json").read_text())
    assert best["averaged"] is True
    got = export_checkpoint(str(league_run / "best"), engine_dtype)[1]
    at = league_run / "checkpoints" / f"step_{best['step']:07d}" / "averaged"
    initial = export_checkpoint(str(league_run / "league" / "snap-0"), engine_dtype)[1]
    assert got == (initial if best["step"] == 0 else export_checkpoint(str(at), engine_dtype)[1])


def test_snapshots_are_promoted_and_played_with_the_weights_they_were_saved_with(league_run, engine_dtype):
    last = league_run / "checkpoints" / FIRST
    state = league_at(last)
    # snap-0 is the initial policy; threshold 0 promotes at every check (steps 2 and 4).
    assert [(m.id, m.step) for m in state.members] == [("snap-0", 0), ("snap-1", 2), ("snap-2", 4)]
    for m in state.members:  # the checkpoint on disk (relative to the run) is what the league broadcast
        assert export_checkpoint(str(league_run / m.path), engine_dtype)[1] == m.checksum
    turns = pq.read_table(last / "buffer.parquet").to_pylist()
    versions = {m.id: m.version for m in state.members}
    played = {(t["opponent_id"], t["opponent_version"]) for t in turns if t["opponent_id"] in versions}
    assert played and all(versions[member] == v for member, v in played)
    assert {t["game"] for t in turns} == {"tictactoe", "kuhn", "negotiation"}


def test_elo_moves_with_every_league_game(league_run):
    state = league_at(league_run / "checkpoints" / FIRST)
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


def test_kuhn_average_spans_the_newest_half_of_the_evaluations_across_the_resume(league_run):
    lines = (league_run / POLICIES).read_text().splitlines()
    rows = [json.loads(line) for line in lines]
    steps, versions = [r["step"] for r in rows], [r["version"] for r in rows]
    assert steps == sorted(steps) and steps[0] == 0 and steps[-1] == 6 and 2 in steps and 4 in steps
    assert len(set(versions)) == len(versions)  # weights measured again count once
    n = math.ceil(0.5 * len(rows))  # small_cfg's eval.kuhn_average_tail
    avg = json.loads((league_run / "summary.json").read_text())["after"]["kuhn/average"]
    assert (avg["evaluations"], avg["from_step"], avg["to_step"]) == (n, rows[-n]["step"], 6)
    expected = kuhn.exploitability(kuhn.average_policy([r["policy"] for r in rows[-n:]]))
    assert avg["exploitability"] == pytest.approx(expected)
    metrics = pq.read_table(league_run / "metrics.parquet").to_pylist()
    logged = [m["value"] for m in metrics if m["name"] == "eval/kuhn/average_exploitability"]
    assert logged and logged[-1] == pytest.approx(expected)


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
    before = league_at(league_run / "checkpoints" / FIRST)
    after = league_at(league_run / "checkpoints" / LAST)
    assert [m.id for m in after.members][:3] == [m.id for m in before.members]
    assert after.members[3].id == "snap-3" and after.members[3].step == 6
    assert after.games_played > before.games_played
    assert after.rating_history[: len(before.rating_history)] == before.rating_history
    # the games after the resume were rated at the resumed run's steps (they read step 0
    # until its first chunk of steps ended)
    steps = [step for step, _, _ in after.rating_history]
    assert steps == sorted(steps) and steps[len(before.rating_history)] >= 4
    # matchmaking's random state went on from where it was, not from the seed again
    saved = json.loads((league_run / "checkpoints" / FIRST / "league_rng.json").read_text())
    assert saved != json.loads((league_run / "checkpoints" / LAST / "league_rng.json").read_text())


def test_skill_tokens_prefix_the_prompts(league_run):
    turns = pq.read_table(driver.latest_checkpoint(league_run) / "buffer.parquet").to_pylist()
    skill_ids = {3, 4, 5}  # <novice>, <intermediate>, <expert> in the default tokenizer
    assert all(t["prompt_ids"][1] in skill_ids for t in turns if t["prompt_ids"])


def test_an_opponent_engine_refuses_weights_whose_checksum_does_not_match(
    ray_session, generator, tiny_model, engine_dtype
):
    from actors.generator import WeightMismatch
    from actors.league import LeagueActor

    ray = ray_session
    league = LeagueActor.remote(
        LeagueConfig(enabled=True), 0, "test", str(engine_dtype).removeprefix("torch.")
    )
    blob, checksum = export_checkpoint(tiny_model, engine_dtype)
    member = {"version": 3, "step": 0, "path": tiny_model}
    ray.get(league.add_member.remote({"id": "forged", "checksum": "0" * 64, **member}, blob))
    ray.get(league.add_member.remote({"id": "honest", "checksum": checksum, **member}, blob))
    per_game = ray.get(generator.head_to_head.remote(league, "honest", 1))
    assert per_game["tictactoe"]["games"] == 2
    assert "honest" in ray.get(generator.stats.remote())["members"]
    # the session generator holds one opponent: the forged weights go into honest's engine
    with pytest.raises(WeightMismatch, match="forged"):
        ray.get(generator.head_to_head.remote(league, "forged", 1))
    assert ray.get(generator.stats.remote())["members"] == []  # never seated
    # the refused engine is kept aside, not closed: closing an engine of this process tore
    # down vLLM's parallel state under every other, and the learner's engine failed at its
    # next call ("pipeline model parallel group is not initialized"). Both still play, the
    # honest member from the engine set aside
    rows = schema.from_ipc(ray.get(generator.self_play.remote(2))).to_pylist()
    assert any(r["response_ids"] for r in rows)
    assert ray.get(generator.head_to_head.remote(league, "honest", 1))["tictactoe"]["games"] == 2
    assert ray.get(generator.stats.remote())["members"] == ["honest"]
    ray.kill(league)
