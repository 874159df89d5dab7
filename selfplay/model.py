"""The default policy: a small Llama built locally from a preset, with a character-level
tokenizer this project defines. Saved in HF format so vLLM and transformers load it through
the same path as any other HF checkpoint (e.g. a Qwen directory on a cluster)."""

from __future__ import annotations

import string
from pathlib import Path

import torch
from tokenizers import Tokenizer, decoders, models, pre_tokenizers, processors
from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

SPECIAL_TOKENS = ["<pad>", "<bos>", "<eos>", "<novice>", "<intermediate>", "<expert>"]
CHARACTERS = list(string.printable[:95]) + ["\n"]  # digits, letters, punctuation, space, newline
UNKNOWN = "<unk>"  # any other character; last, so the ids above are those of earlier models

# name -> (hidden, intermediate, layers, heads); head dim 64 but in `500k` (32: vLLM's CPU
# attention takes both).
PRESETS = {
    "500k": (128, 352, 2, 4),  # the 1m preset's width, half its depth, twice its heads
    "1m": (128, 352, 4, 2),
    "3m": (256, 688, 4, 4),
    "25m": (512, 1376, 8, 8),
    "500m": (1280, 3456, 24, 20),  # ~0.5B, Qwen2.5-0.5B's size class: for GPU learners and clusters
}


def build_tokenizer() -> PreTrainedTokenizerFast:
    vocab = {tok: i for i, tok in enumerate(SPECIAL_TOKENS + CHARACTERS + [UNKNOWN])}
    tok = Tokenizer(models.WordLevel(vocab=vocab, unk_token=UNKNOWN))
    tok.pre_tokenizer = pre_tokenizers.Split(pattern="", behavior="isolated")
    tok.decoder = decoders.Fuse()
    tok.add_special_tokens([*SPECIAL_TOKENS, UNKNOWN])
    tok.post_processor = processors.TemplateProcessing(single="<bos> $A", special_tokens=[("<bos>", 1)])
    return PreTrainedTokenizerFast(
        tokenizer_object=tok,
        bos_token="<bos>",
        eos_token="<eos>",
        pad_token="<pad>",
        unk_token=UNKNOWN,
        model_max_length=512,
    )


def build_model(preset: str, vocab_size: int, max_positions: int, seed: int) -> LlamaForCausalLM:
    if preset not in PRESETS:
        raise ValueError(f"model.preset: unknown preset {preset!r}; choose one of {sorted(PRESETS)}")
    hidden, inter, layers, heads = PRESETS[preset]
    config = LlamaConfig(
        vocab_size=vocab_size,
        hidden_size=hidden,
        intermediate_size=inter,
        num_hidden_layers=layers,
        num_attention_heads=heads,
        num_key_value_heads=heads,
        max_position_embeddings=max_positions,
        tie_word_embeddings=False,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
        torch_dtype="float32",
    )
    torch.manual_seed(seed)
    return LlamaForCausalLM(config)


def create_default_model(
    out_dir: str | Path, preset: str = "3m", max_positions: int = 256, seed: int = 0
) -> Path:
    """Write a fresh randomly initialised model and its tokenizer as an HF directory."""
    out = Path(out_dir)
    tokenizer = build_tokenizer()
    vocab_size = 64 * ((len(tokenizer) + 63) // 64)
    model = build_model(preset, vocab_size, max_positions, seed)
    out.mkdir(parents=True, exist_ok=True)
    model.save_pretrained(out, safe_serialization=True)
    tokenizer.save_pretrained(out)
    return out


def count_parameters(model: torch.nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


def model_dir(path: str) -> str:
    """Accept an HF model directory or a checkpoint directory holding one in model/."""
    p = Path(path)
    for candidate in (p, p / "model"):
        if (candidate / "config.json").exists():
            return str(candidate)
    raise FileNotFoundError(f"{path}: neither an HF model directory nor a checkpoint with model/")
