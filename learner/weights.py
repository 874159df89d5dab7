"""Weight export for broadcast: safetensors bytes (no pickles) in the engine's dtype, with
the checksum generators must echo back after loading them."""
from __future__ import annotations

import torch
from safetensors.torch import save as save_safetensors

from actors.engine_ext import state_checksum


def export_weights(model: torch.nn.Module, dtype: torch.dtype) -> tuple[bytes, str]:
    # .to(dtype) copies, so tied parameters (e.g. Qwen's embeddings) no longer share storage.
    tensors = {k: v.detach().to(dtype).contiguous() for k, v in model.state_dict().items()}
    return save_safetensors(tensors), state_checksum(tensors)


def export_checkpoint(model_dir: str, dtype: str | torch.dtype) -> tuple[bytes, str]:
    """Export an HF checkpoint exactly as the learner exported it when it was live (tied
    weights included), e.g. to bring league members back after a resume."""
    from transformers import AutoModelForCausalLM
    dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
    model = AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32)
    return export_weights(model, dtype)
