"""The weight receiver's coverage check on fused parameters (actors/engine_ext.py); the
load itself is tested on a real engine in test_integration.py."""

from __future__ import annotations

import subprocess
import sys

import pytest

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


ARCH_GET_XCOMP_PERM = 0x1022  # arch/x86/include/uapi/asm/prctl.h
XFEATURE_XTILEDATA = 18
SYS_ARCH_PRCTL = 158  # x86_64


def test_a_worker_holds_amx_tiles_once_the_extension_is_imported():
    """vLLM's CPU attention runs AMX tile instructions without asking Linux for them; a
    process that has not asked dies of SIGILL. Importing the extension (a vLLM worker's first
    act) must ask: the kernel's permission mask then has the tile-data bit. Checked in a
    fresh interpreter, as a worker starts."""
    import platform

    import torch

    if platform.machine() != "x86_64" or not torch.cpu._is_amx_tile_supported():
        pytest.skip("no AMX tiles on this CPU")
    probe = f"""
import ctypes
libc = ctypes.CDLL(None, use_errno=True)
def granted():
    mask = ctypes.c_ulong(0)
    assert libc.syscall({SYS_ARCH_PRCTL}, {ARCH_GET_XCOMP_PERM}, ctypes.byref(mask)) == 0
    return bool(mask.value >> {XFEATURE_XTILEDATA} & 1)
before = granted()
import actors.engine_ext
print(before, granted())
"""
    out = subprocess.run([sys.executable, "-c", probe], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "True"]
