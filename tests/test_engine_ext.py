"""The weight receiver's coverage check on fused parameters and its read-back of what the
engine holds (actors/engine_ext.py), on modules shaped as vLLM-CPU leaves them; the load
itself is tested on a real engine in test_integration.py and test_hf_models.py."""

from __future__ import annotations

import copy
import subprocess
import sys
import weakref

import pytest
import torch
from torch import nn

from actors import engine_ext
from actors.engine_ext import WeightsDiffer, differing, held_weights, missing_shards

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


class PackedLinear(nn.Module):
    """A linear layer as vLLM-CPU leaves it: the parameter emptied, the weight held by the
    layer's kernel (`cpu_linear`)."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor | None = None):
        super().__init__()
        self.input_size_per_partition = weight.shape[1]
        self.weight = nn.Parameter(torch.empty(0, dtype=weight.dtype), requires_grad=False)
        self.bias = None if bias is None else nn.Parameter(bias, requires_grad=False)
        self.kernel_weight = weight.clone()
        self.cpu_linear = lambda x, w, b: nn.functional.linear(x, self.kernel_weight, b)


class PaddedEmbedding(nn.Module):
    """vLLM's vocabulary-parallel embedding: rows padded past the vocabulary."""

    def __init__(self, weight: torch.Tensor, padded: int):
        super().__init__()
        self.org_vocab_size = weight.shape[0]
        rows = torch.zeros(padded, weight.shape[1], dtype=weight.dtype)
        rows[: weight.shape[0]] = weight
        self.weight = nn.Parameter(rows, requires_grad=False)


def sent_and_engine():
    """HF-named tensors (bf16, as sent) and an engine model holding them: q/k/v fused into
    one packed layer with a float32 bias, a padded embedding, the LM head tied to it."""
    g = torch.Generator().manual_seed(0)

    def rand(*shape):
        return torch.randn(*shape, generator=g).to(torch.bfloat16)

    sent = {
        "model.embed_tokens.weight": rand(10, 8),
        "model.layers.0.self_attn.q_proj.weight": rand(8, 8),
        "model.layers.0.self_attn.k_proj.weight": rand(4, 8),
        "model.layers.0.self_attn.v_proj.weight": rand(4, 8),
        "model.layers.0.self_attn.q_proj.bias": rand(8),
        "model.layers.0.self_attn.k_proj.bias": rand(4),
        "model.layers.0.self_attn.v_proj.bias": rand(4),
        "model.norm.weight": rand(8),
    }
    sent["lm_head.weight"] = sent["model.embed_tokens.weight"].clone()
    attn = "model.layers.0.self_attn"
    qkv = PackedLinear(
        torch.cat([sent[f"{attn}.{p}_proj.weight"] for p in "qkv"]),
        torch.cat([sent[f"{attn}.{p}_proj.bias"] for p in "qkv"]).float(),
    )
    engine = nn.Module()
    engine.model = nn.Module()
    engine.model.embed_tokens = PaddedEmbedding(sent["model.embed_tokens.weight"], padded=64)
    layer = nn.Module()
    layer.self_attn = nn.Module()
    layer.self_attn.qkv_proj = qkv
    engine.model.layers = nn.ModuleList([layer])
    engine.model.norm = nn.Module()
    engine.model.norm.weight = nn.Parameter(sent["model.norm.weight"].clone(), requires_grad=False)
    engine.lm_head = engine.model.embed_tokens  # tied, as vLLM ties Qwen's head
    return sent, engine


def test_what_the_engine_holds_reads_back_as_the_tensors_sent():
    """Packed weights through the kernel, fused shards by their rows, the padded vocabulary
    cut, the tied head from the embedding, a float32 bias compared by value."""
    sent, engine = sent_and_engine()
    held = dict(held_weights(engine, PACKED, sent))
    assert {n: tuple(t.shape) for n, t in held.items()} == {n: tuple(t.shape) for n, t in sent.items()}
    assert differing(held.items(), sent) == []


def test_one_changed_value_in_a_packed_shard_names_that_shard_only():
    sent, engine = sent_and_engine()
    engine.model.layers[0].self_attn.qkv_proj.kernel_weight[9, 3] += 1  # row 9: k_proj's row 1
    engine.model.layers[0].self_attn.qkv_proj.bias.data[13] += (
        0.001  # a float32 value off bf16's grid: v's bias
    )
    engine.model.embed_tokens.weight.data[63] = 5.0  # a padding row is not the vocabulary's
    assert differing(held_weights(engine, PACKED, sent), sent) == [
        "model.layers.0.self_attn.k_proj.weight",
        "model.layers.0.self_attn.v_proj.bias",
    ]
    engine.model.embed_tokens.weight.data[2, 0] += 1  # the embedding, and the head tied to it
    assert differing(held_weights(engine, PACKED, sent), sent)[:2] == [
        "lm_head.weight",
        "model.embed_tokens.weight",
    ]


def test_a_fused_weight_of_another_size_differs_in_every_shard():
    sent, engine = sent_and_engine()
    qkv = engine.model.layers[0].self_attn.qkv_proj
    qkv.kernel_weight = qkv.kernel_weight[:12]  # v's rows missing: no row offset can match
    wrong = differing(held_weights(engine, PACKED, sent), sent)
    assert [n for n in wrong if n.endswith(".weight")] == [
        f"model.layers.0.self_attn.{p}_proj.weight" for p in "kqv"
    ]


def test_a_zero_of_either_sign_is_the_same_value_and_a_name_the_engine_lacks_raises():
    sent, engine = sent_and_engine()
    sent["model.norm.weight"][0] = -0.0  # the engine holds +0.0 there after this
    engine.model.norm.weight.data[0] = 0.0
    assert differing(held_weights(engine, PACKED, sent), sent) == []
    with pytest.raises(WeightsDiffer, match="holds no tensor for 'model.layers.0.mlp.up_proj.weight'"):
        dict(held_weights(engine, PACKED, {**sent, "model.layers.0.mlp.up_proj.weight": torch.zeros(2, 8)}))


def test_nan_where_nan_was_sent_is_what_was_sent():
    """A learner gone to NaN: the engine holds exactly the bytes sent, which read back as
    'other values than were sent' (torch.equal calls NaN unequal to itself)."""
    sent, engine = sent_and_engine()
    sent["model.norm.weight"][0] = float("nan")
    engine.model.norm.weight.data[0] = float("nan")
    assert differing(held_weights(engine, PACKED, sent), sent) == []
    engine.model.norm.weight.data[1] += 1  # and a value that differs still differs
    assert differing(held_weights(engine, PACKED, sent), sent) == ["model.norm.weight"]


def test_the_read_back_holds_one_copy_at_a_time(monkeypatch):
    """A packed layer reads back as a copy: a second copy of the model if all were held at
    once, while the engine also holds the tensors it loaded. Each is gone before the next
    is read (two layers here, so two fused weights)."""
    sent, engine = sent_and_engine()
    layer = copy.deepcopy(engine.model.layers[0])
    qkv = engine.model.layers[0].self_attn.qkv_proj
    layer.self_attn.qkv_proj = PackedLinear(qkv.kernel_weight, qkv.bias.data.clone())
    engine.model.layers.append(layer)
    sent.update({k.replace("layers.0", "layers.1"): v for k, v in sent.items() if ".layers.0." in k})
    real, copies = engine_ext.read_held, []

    def tracked(module, attr):
        held = real(module, attr)
        if not isinstance(held, nn.Parameter):  # a copy or a view, not the engine's own
            assert [r for r in copies if r() is not None] == []
            copies.append(weakref.ref(held))
        return held

    monkeypatch.setattr(engine_ext, "read_held", tracked)
    assert differing(held_weights(engine, PACKED, sent), sent) == []
    assert len(copies) >= 4  # two fused weights, the embedding and the head tied to it


def test_a_weight_load_forgets_the_engines_prefix_cache():
    """vLLM's prefix cache is keyed by token ids alone: after an in-place load, a prompt
    sharing a cached block reused keys and values of the old weights. Every load resets it
    (the real engine's call is made by every load in the integration tests), and a reset
    that fails fails the load."""
    import types

    from actors.engine import Engine

    resets = []
    engine = Engine.__new__(Engine)
    engine.in_process = True
    engine.llm = types.SimpleNamespace(
        collective_rpc=lambda method, args: ["sum"], reset_prefix_cache=lambda: resets.append(1) or True
    )
    assert engine.load_weights(b"blob") == "sum" and engine.load_tensors({}) == "sum" and resets == [1, 1]
    engine.llm.reset_prefix_cache = lambda: False
    with pytest.raises(RuntimeError, match="prefix cache could not be reset"):
        engine.load_weights(b"blob")
