"""Any HF-format directory goes through the same path as the default model. Here a tiny
Qwen2-architecture model (tied embeddings, grouped-query attention, as small Qwen
checkpoints have) is built locally: the learner trains it, exports it, and a vLLM engine
reloads it in place with log-probs matching the learner's. Its heads are 32 wide, as the
demo's `500k` preset's (the engines' other tests run the 64-wide heads of `1m`)."""

from __future__ import annotations

import copy

import pytest
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from actors.generator import Generator, Match
from learner.learner import Learner, collate, sequence_logprobs
from selfplay.config import load_config
from selfplay.league import LEARNER
from selfplay.model import build_tokenizer
from selfplay.weights import export_tensors, export_weights

pytestmark = pytest.mark.integration


@pytest.fixture(scope="module")
def qwen_dir(tmp_path_factory):
    tok = build_tokenizer()
    config = Qwen2Config(
        vocab_size=128,
        hidden_size=128,
        intermediate_size=256,
        num_hidden_layers=2,
        num_attention_heads=4,  # heads of 32
        num_key_value_heads=2,
        max_position_embeddings=64,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    out = tmp_path_factory.mktemp("qwen")
    Qwen2ForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return str(out)


@pytest.fixture(scope="module")
def cfg():
    return load_config(
        None,
        [
            "generator.games_per_wave=32",
            "generator.max_response_tokens=1",
            "learner.batch_size=16",
            "buffer.min_size=16",
            "learner.lr=1e-2",
            "generator.enforce_eager=true",
        ],
    )


@pytest.fixture(scope="module")
def gen(qwen_dir, cfg):
    """One vLLM engine on the Qwen directory for this module's tests."""
    g = Generator.from_model("g", "t", {"tictactoe": 1.0}, qwen_dir, cfg.model, cfg.generator, 0)
    yield g
    g.close()


def mean_abs_diff(logp, batch) -> float:
    return (((logp - batch["behaviour_logp"]).abs() * batch["mask"]).sum() / batch["mask"].sum()).item()


def test_qwen_directory_trains_and_broadcasts_through_the_same_path(qwen_dir, cfg, gen):
    learner = Learner(cfg.learner, cfg.model, qwen_dir, 0)
    table = gen.self_play(32)
    # rewards as the verifier would attach them: every turn's return is its outcome here
    table = table.set_column(table.schema.get_field_index("ret"), "ret", table["outcome"])
    learner.train_step(table)

    def engine_vs_learner() -> float:
        rows = [r for r in gen.self_play(16).to_pylist() if r["response_ids"]]
        batch = collate(rows, pad_id=0)
        with torch.no_grad():
            logp, _ = sequence_logprobs(learner.model, batch)
        return mean_abs_diff(logp, batch)

    # the engine first holds other weights (all zero, embeddings tied): it diverges...
    zero = copy.deepcopy(learner.model)
    with torch.no_grad():
        for p in zero.parameters():
            p.zero_()
    gen.set_weights(export_weights(zero, learner.engine_dtype)[0], 1)
    assert engine_vs_learner() > 0.1  # twice the agreement bound below
    # ...until it loads the learner's
    blob, checksum = learner.export()
    assert gen.set_weights(blob, 2) == checksum
    assert engine_vs_learner() < 0.05


def test_the_engine_is_read_back_after_each_load_and_a_changed_shard_is_named(qwen_dir, cfg, gen):
    """The checksum a load echoes is of what the engine holds: vLLM-CPU packs every linear
    layer for oneDNN (the parameter left empty), so the receiver reads each weight back
    through the layer's kernel, each q/k/v shard from its rows of the fused layer, the
    tied head from the padded embedding. Loaded with one k_proj value changed, the engine
    no longer holds the first tensors, and the read-back names that tensor alone."""
    from actors.engine_ext import WeightsDiffer

    learner = Learner(cfg.learner, cfg.model, qwen_dir, 0)
    tensors, checksum = export_tensors(learner.model.state_dict(), learner.engine_dtype)
    engine = gen.engines[LEARNER]
    assert engine.load_tensors(tensors) == checksum
    engine.llm.collective_rpc("verify", args=(tensors,))  # holds them still: no error
    changed = dict(tensors)
    name = "model.layers.1.self_attn.k_proj.weight"
    changed[name] = tensors[name].clone()
    changed[name][0, 0] += 1
    assert engine.load_tensors(changed) != checksum
    with pytest.raises(WeightsDiffer, match=rf"for 1 of {len(tensors)} tensors \(e.g. \['{name}'\]\)"):
        engine.llm.collective_rpc("verify", args=(tensors,))


def test_behaviour_logprobs_are_the_sampled_policys_at_any_temperature(qwen_dir, cfg, gen):
    """vLLM reports processed log-probs (after temperature) and the learner divides its
    logits by the same temperature, so the PPO ratio starts at 1 whatever T is; the T = 1
    log-probs of the same tokens differ, so the check can tell the two apart."""
    learner = Learner(cfg.learner, cfg.model, qwen_dir, 0, temperature=0.5)
    blob, checksum = learner.export()
    assert gen.set_weights(blob, 3) == checksum  # the engine holds the learner's weights
    rows = [
        r
        for r in gen.play([Match("tictactoe", (LEARNER, LEARNER))] * 32, 0.5).to_pylist()
        if r["response_ids"]
    ]
    batch = collate(rows, pad_id=0)
    with torch.no_grad():
        at_t, _ = sequence_logprobs(learner.model, batch, learner.temperature)
        at_one, _ = sequence_logprobs(learner.model, batch)
    assert mean_abs_diff(at_t, batch) < 0.05 < mean_abs_diff(at_one, batch)


def test_legal_move_masking_restricts_the_engine_and_the_learner_alike(qwen_dir, cfg, gen):
    """`generator.legal_moves_only`: vLLM draws every move from the free cells' tokens
    (no illegal move in 32 games of an untrained policy, which plays mostly illegal ones
    unmasked), and its processed log-probs are the softmax over those tokens, which the
    learner's restricted softmax reproduces; the whole-vocabulary log-probs are far off."""
    learner = Learner(cfg.learner, cfg.model, qwen_dir, 0, temperature=0.5)
    blob, checksum = learner.export()
    assert gen.set_weights(blob, 5) == checksum
    gen.cfg.legal_moves_only = True
    try:
        table = gen.play([Match("tictactoe", (LEARNER, LEARNER))] * 32, 0.5)
    finally:
        gen.cfg.legal_moves_only = False
    rows = table.to_pylist()
    assert not any(r["illegal"] for r in rows) and len(rows) >= 32 * 5  # every game to its end
    assert all(r["response_ids"][0] in r["allowed_ids"] for r in rows)
    batch = collate(rows, pad_id=0)
    with torch.no_grad():
        masked, _ = sequence_logprobs(learner.model, batch, learner.temperature)
        batch.pop("allowed")
        whole, _ = sequence_logprobs(learner.model, batch, learner.temperature)
    assert mean_abs_diff(masked, batch) < 0.05 < 0.5 < mean_abs_diff(whole, batch)


def test_the_engines_continuation_loglikelihood_is_the_learners(qwen_dir, cfg, gen):
    """`Engine.loglikelihood` (vLLM prompt log-probs, which Kuhn poker's exploitability
    reads) indexes each continuation token at its own position: the sum matches the HF
    model's log-probs of the same tokens, and a one-token shift would not."""
    learner = Learner(cfg.learner, cfg.model, qwen_dir, 0)
    with torch.no_grad():
        learner.model.lm_head.weight.mul_(8)  # a peaked policy: a shifted index is far off
    blob, checksum = learner.export()
    assert gen.set_weights(blob, 4) == checksum
    tok = build_tokenizer()
    prompts = [tok(t).input_ids for t in ("kuhn K pb:", "kuhn J :", "tictactoe X 123456789:")]
    conts = [tok(t, add_special_tokens=False).input_ids for t in ("b", "pp", "5 ok")]
    engine = gen.engines[LEARNER].loglikelihood(prompts, conts)
    ids = [p + c for p, c in zip(prompts, conts)]
    with torch.no_grad():
        model = learner.model.float().eval()
        exact, shifted = [], []
        for seq, p in zip(ids, prompts):
            logp = torch.log_softmax(model(torch.tensor([seq])).logits[0].float(), -1)
            exact.append(sum(logp[i - 1, seq[i]].item() for i in range(len(p), len(seq))))
            shifted.append(sum(logp[i, seq[i]].item() for i in range(len(p), len(seq) - 1)))
    assert all(abs(e - x) < 0.05 * (len(c) + 1) for e, x, c in zip(engine, exact, conts)), (engine, exact)
    assert any(abs(e - s) > 0.5 for e, s in zip(engine, shifted)), (engine, shifted)


def test_kuhn_exploitability_read_from_the_engine_is_the_learners(qwen_dir, cfg, gen):
    """The whole path Kuhn poker's exploitability takes (the self-play prompt of each of
    the 12 information states, each reply's tokens, the engine's log-likelihoods, the
    temperature) gives the policy table the learner's own model gives."""
    from selfplay.evals import kuhn_policy_table
    from selfplay.games.kuhn import exploitability

    learner = Learner(cfg.learner, cfg.model, qwen_dir, 0)
    with torch.no_grad():
        learner.model.lm_head.weight.mul_(8)  # away from uniform: the table has something to show
    blob, checksum = learner.export()
    assert gen.set_weights(blob, 5) == checksum
    engine_table = gen.kuhn_policy()

    def hf_loglikelihood(observations, replies):
        out = []
        model = learner.model.float().eval()
        for o, r in zip(observations, replies):
            prompt = gen.prompt(o, "intermediate")
            cont = list(gen.encode(r))[len(gen.encode("")) :]
            seq = prompt + cont
            with torch.no_grad():
                logp = torch.log_softmax(model(torch.tensor([seq])).logits[0].float(), -1)
            out.append(sum(logp[i - 1, seq[i]].item() for i in range(len(prompt), len(seq))))
        return out

    hf = kuhn_policy_table(hf_loglikelihood, gen.cfg.temperature)
    mine, theirs = engine_table["policy"], hf["policy"]
    assert len(mine) == len(theirs) == 12
    assert max(abs(a - b) for k in theirs for a, b in zip(mine[k], theirs[k])) < 0.03
    assert max(abs(theirs[k][0] - 0.5) for k in theirs) > 0.1  # not the uniform table
    assert abs(engine_table["illegal_mass"] - hf["illegal_mass"]) < 0.03
    assert abs(exploitability(mine) - exploitability(theirs)) < 0.02
