"""The driver end to end on a real local Ray with a real vLLM engine, checkpoint/resume,
and the CLI."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys

import pyarrow.parquet as pq
import pytest

from selfplay import driver

pytestmark = pytest.mark.integration


def test_resume_continues_at_the_same_step(ray_session, small_cfg, tmp_path):
    cfg = dataclasses.replace(
        small_cfg,
        total_steps=4,
        log_every=2,
        checkpoint_every=2,
        out_dir=str(tmp_path),
        eval=dataclasses.replace(small_cfg.eval, every_steps=2, games=4),
    )
    run_dir = driver.train(cfg)
    first = driver.latest_checkpoint(run_dir)
    assert first.name == "step_0000004"
    state = json.loads((first / "driver_state.json").read_text())
    assert (state["step"], state["version"]) == (4, 4)

    resumed = driver.resume_config(run_dir, ["total_steps=6"])
    assert driver.train(resumed, resume_dir=run_dir) == run_dir
    last = driver.latest_checkpoint(run_dir)
    assert last.name == "step_0000006"
    learner_state = json.loads((last / "learner_state.json").read_text())
    assert (learner_state["step"], learner_state["version"]) == (6, 6)
    metrics = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    assert [m["step"] for m in metrics if m["name"] == "loss"] == [1, 2, 3, 4, 5, 6]  # each step once
    assert {m["name"] for m in metrics} >= {
        "eval/tictactoe/random/win",
        "eval/tictactoe/minimax/non_loss",
        "tokens_per_s",
    }
    # every evaluation measured the weights of the step it is logged at (broadcast every step)
    versions = [(m["step"], m["value"]) for m in metrics if m["name"] == "eval/tictactoe/random/version"]
    assert versions and all(step == version for step, version in versions)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert set(summary) >= {"before", "after", "turns", "acceptance"} and summary["steps"] == 6
    assert summary["turns"]["trained"] == 6 * cfg.learner.batch_size  # the buffer's counts span the resume
    assert summary["turns"]["generated"] >= summary["turns"]["forwarded"] > 0


def test_eval_cli_plays_a_checkpoint_against_another_model(tiny_model, tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "selfplay.cli",
            "eval",
            "--checkpoint",
            tiny_model,
            "--opponent",
            tiny_model,
            "--games",
            "3",
            "--json",
            "--enforce-eager",
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)  # nothing but the JSON on stdout
    assert result["games"] == 6 and result["opponent"] == tiny_model
    assert result["win"] + result["draw"] + result["loss"] == pytest.approx(1.0)


def test_run_cli_rejects_an_unknown_field_naming_it():
    out = subprocess.run(
        [sys.executable, "-m", "selfplay.cli", "run", "configs/tictactoe.yaml", "--set", "learner.lrr=1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "learner.lrr: unknown field" in out.stderr
