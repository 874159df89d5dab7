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
