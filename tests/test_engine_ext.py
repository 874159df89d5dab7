"""The weight receiver's coverage check on fused parameters (actors/engine_ext.py); the
load itself is tested on a real engine in test_integration.py."""

from __future__ import annotations

from actors.engine_ext import missing_shards

PACKED = {"qkv_proj": ["q_proj", "k_proj", "v_proj"], "gate_up_proj": ["gate_proj", "up_proj"]}
ENGINE = [
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.qkv_proj.weight",
    "model.layers.0.self_attn.o_proj.weight",
    "model.layers.0.mlp.gate_up_proj.weight",
    "model.layers.0.mlp.down_proj.weight",
    "lm_head.weight",
]
HF = [
    "model.embed_tokens.weight",
    "model.layers.0.self_attn.q_proj.weight",
    "model.layers.0.self_attn.k_proj.weight",
    "model.layers.0.self_attn.v_proj.weight",
    "model.layers.0.self_attn.o_proj.weight",
    "model.layers.0.mlp.gate_proj.weight",
    "model.layers.0.mlp.up_proj.weight",
    "model.layers.0.mlp.down_proj.weight",
    "lm_head.weight",
]


def test_a_checkpoint_with_every_shard_lacks_nothing():
    assert missing_shards(ENGINE, PACKED, HF) == []


def test_a_fused_parameter_missing_one_shard_is_named():
    sent = [n for n in HF if ".k_proj." not in n and ".up_proj." not in n]
    assert missing_shards(ENGINE, PACKED, sent) == [
        "model.layers.0.mlp.up_proj.weight",
        "model.layers.0.self_attn.k_proj.weight",
    ]


def test_foreign_names_are_left_to_the_check_after_the_load():
    """None of a fused parameter's shards under these names: not a missing shard, maybe
    another naming; the engine's own report of what it loaded decides."""
    assert missing_shards(ENGINE, PACKED, ["transformer.h.0.attn.c_attn.weight"]) == []
    assert missing_shards(ENGINE, {}, HF[:1]) == []  # a model without fused parameters
