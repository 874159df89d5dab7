"""Weights on the wire: safetensors bytes (no pickles) in the engine's dtype, and the
checksum an engine must echo back after loading them. Shared by the learner (export), the
engine's worker extension (checksum of what arrived) and the league (members restored
from checkpoints), so neither `actors/` nor `learner/` imports the other."""

from __future__ import annotations

import hashlib

import torch
from safetensors.torch import save as save_safetensors


def state_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """Order-independent digest of named tensors, computed on fp32 values (hashed from the
    array's own buffer: no second copy of the weights)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().to(torch.float32).contiguous().cpu().numpy().data)
    return digest.hexdigest()


def export_tensors(state: dict[str, torch.Tensor], dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], str]:
    """A model's named tensors (its state dict) in the engine's dtype, on the host, and
    their checksum."""
    # .to(dtype) copies, so tied parameters (e.g. Qwen's embeddings) no longer share storage;
    # the tensors sent are host memory whatever device the model trains on.
    tensors = {k: v.detach().to(device="cpu", dtype=dtype).contiguous() for k, v in state.items()}
    return tensors, state_checksum(tensors)


def export_weights(model: torch.nn.Module, dtype: torch.dtype) -> tuple[bytes, str]:
    tensors, checksum = export_tensors(model.state_dict(), dtype)
    return save_safetensors(tensors), checksum


def export_checkpoint(model_dir: str, dtype: str | torch.dtype) -> tuple[bytes, str]:
    """Export an HF checkpoint exactly as the learner exported it when it was live (tied
    weights included), e.g. to bring league members back after a resume."""
    from transformers import AutoModelForCausalLM

    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return export_weights(model, dtype)
