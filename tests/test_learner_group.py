"""A run whose learner is a group of two ranks (learner.num_workers 2, FSDP2 over gloo),
end to end on a real local Ray with a real vLLM engine: it trains, broadcasts what the
group trained, checkpoints, and leaves nothing behind. That the ranks take one learner's
steps, and that a saved group resumes to the same next step: tests/test_sharded_learner.py."""

from __future__ import annotations

import dataclasses
import json

import pytest
from safetensors.torch import load_file

from selfplay import driver

pytestmark = pytest.mark.integration


def test_a_run_with_a_learner_group_trains_broadcasts_and_checkpoints(ray_session, small_cfg, tmp_path):
    ray = ray_session
    cfg = dataclasses.replace(
        small_cfg,
        total_steps=4,
        log_every=1,
        checkpoint_every=2,
        out_dir=str(tmp_path),
        learner=dataclasses.replace(small_cfg.learner, num_workers=2, num_cpus=0.5, advantage="gae"),
        buffer=dataclasses.replace(small_cfg.buffer, whole_games=True),
        eval=dataclasses.replace(small_cfg.eval, every_steps=100),
    )
    run_dir = driver.train(cfg)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 4 and summary["faults"]["learner_dropped"] == []
    checkpoint = driver.latest_checkpoint(run_dir)
    assert checkpoint.name == "step_0000004"
    for name in ("optimizer.pt", "value_head.safetensors", "learner_state.json", "model/config.json"):
        assert (checkpoint / name).exists(), name
    initial = load_file(run_dir / "initial_model" / "model.safetensors")
    trained = load_file(checkpoint / "model" / "model.safetensors")
    assert sorted(trained) == sorted(initial)
    assert max((trained[k] - initial[k]).abs().max().item() for k in initial) > 1e-4  # the group trained
    assert (
        json.loads((checkpoint / "learner_state.json").read_text())["version"] == 4
    )  # and broadcast each step
    assert not [n for n in ray.util.list_named_actors() if n.startswith("learner")]  # the group is gone...
    placed = ray.util.placement_group_table().values()
    assert all(g["state"] == "REMOVED" for g in placed), placed  # ...with its placement group
