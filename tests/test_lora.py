"""The learner with LoRA adapters (learner.lora_rank, through peft) on a tiny model: only
the adapters train, generators and checkpoints get the merged weights under the model's own
names, and a saved LoRA learner takes the same next step."""

from __future__ import annotations

import copy

import pytest
import torch
from safetensors.torch import load as load_safetensors
from transformers import AutoModelForCausalLM

from learner.learner import Learner, collate, is_lora_key, sequence_logprobs
from selfplay import schema
from selfplay.config import load_config
from selfplay.model import create_default_model
from selfplay.weights import state_checksum
from tests.rows import make_row

LORA = ["learner.lora_rank=4", "learner.lr=1e-2", "learner.batch_size=8"]


@pytest.fixture(scope="module")
def model_dir(tmp_path_factory) -> str:
    return str(create_default_model(tmp_path_factory.mktemp("m"), preset="1m", max_positions=64))


def make_learner(model_dir, overrides=()) -> Learner:
    cfg = load_config(None, [*LORA, *overrides])
    return Learner(cfg.learner, cfg.model, model_dir, seed=0)


def batch(n: int = 8):
    return schema.from_rows([make_row(traj_id=f"t{i}", ret=1.0 if i % 2 else -1.0) for i in range(n)])


def test_only_the_adapters_train_and_the_policy_moves(model_dir):
    learner = make_learner(model_dir)
    trainable = {n for n, p in learner.model.named_parameters() if p.requires_grad}
    assert trainable and all(".lora_A." in n or ".lora_B." in n for n in trainable)
    # q, k, v, o, gate, up and down of 4 layers, an A and a B each
    assert len(trainable) == 2 * 7 * 4
    frozen = {n: p.detach().clone() for n, p in learner.model.named_parameters() if not p.requires_grad}
    before = learner.export_tensors()[1]
    assert before == state_checksum(
        {
            k: v.to(learner.engine_dtype)
            for k, v in AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
            .state_dict()
            .items()
        }
    )  # B starts at zero: the merged weights are the model's own
    for _ in range(2):
        learner.train_step(batch())
    assert all(torch.equal(p, frozen[n]) for n, p in learner.model.named_parameters() if not p.requires_grad)
    assert learner.export_tensors()[1] != before
    # MFU's FLOPs: 4 per frozen weight (forward and the activations' gradient), 6 per adapter
    # weight; rank 4 on the 1m preset: q, k, v, o 2 x 4 x 128 each, gate, up and down
    # 4 x (128 + 352) each, 9,856 a layer; the frozen 820,352 besides the embedding
    assert learner.flops_per_token == 4 * 820_352 + 6 * 4 * 9_856


def test_generators_get_the_merged_weights_under_the_models_own_names(model_dir, tmp_path):
    learner = make_learner(model_dir)
    learner.train_step(batch())
    tensors, checksum = learner.export_tensors()
    plain = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    assert sorted(tensors) == sorted(plain.state_dict())
    merged = copy.deepcopy(learner.model).merge_and_unload().state_dict()  # peft's own merge
    assert all(torch.equal(tensors[k], v.to(learner.engine_dtype)) for k, v in merged.items())
    assert checksum == state_checksum(load_safetensors(learner.export()[0]))
    # the saved model is that policy: its log-probs are the LoRA model's
    learner.save_model(tmp_path / "model")
    saved = AutoModelForCausalLM.from_pretrained(tmp_path / "model", dtype=torch.float32).eval()
    rows = batch().to_pylist()
    b = collate(rows, pad_id=0)
    with torch.no_grad():
        want, _ = sequence_logprobs(learner.model.eval(), b)
        got, _ = sequence_logprobs(saved, b)
    assert torch.allclose(want, got, atol=1e-5)


def test_a_saved_lora_learner_takes_the_same_next_step(model_dir, tmp_path):
    learner = make_learner(model_dir, ["learner.kl_coef=0.1"])
    learner.train_step(batch())
    learner.save(tmp_path)
    assert (tmp_path / "lora.safetensors").exists()
    resumed = make_learner(
        str(tmp_path / "model"), ["learner.kl_coef=0.1"]
    )  # a resume builds on the merged model
    resumed.load(tmp_path)
    a, b = learner.train_step(batch()), resumed.train_step(batch())
    assert a["loss"] == pytest.approx(b["loss"], abs=1e-6) and a["grad_norm"] == pytest.approx(
        b["grad_norm"], abs=1e-6
    )
    assert learner.export_tensors()[1] == resumed.export_tensors()[1]
    state = resumed.model.state_dict()
    assert all(torch.equal(v, state[k]) for k, v in learner.model.state_dict().items() if is_lora_key(k))


def test_lora_targets_that_name_no_layer_are_refused(model_dir):
    with pytest.raises(ValueError, match=r"learner.lora_targets: \['qkv'\] name no linear layer"):
        make_learner(model_dir, ["learner.lora_targets=[qkv]"])


def test_a_checkpoint_of_another_rank_is_refused_by_name(model_dir, tmp_path):
    learner = make_learner(model_dir)
    learner.save(tmp_path)
    other = make_learner(str(tmp_path / "model"), ["learner.lora_rank=8"])
    with pytest.raises(
        ValueError, match=r"lora.safetensors: its adapters are not this model's .* another lora_rank"
    ):
        other.load(tmp_path)
    (tmp_path / "lora.safetensors").unlink()
    with pytest.raises(FileNotFoundError, match="no lora.safetensors"):
        make_learner(str(tmp_path / "model")).load(tmp_path)


def test_adapters_on_a_head_tied_to_the_embeddings_are_refused(model_dir, tmp_path):
    tied = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32, tie_word_embeddings=True)
    tied.save_pretrained(tmp_path)
    with pytest.raises(ValueError, match="learner.lora_targets: lm_head is tied to the input embeddings"):
        make_learner(str(tmp_path), ["learner.lora_targets=[q_proj,lm_head]"])
    assert (
        make_learner(model_dir, ["learner.lora_targets=[q_proj,lm_head]"]).cfg.lora_rank == 4
    )  # untied: fine
