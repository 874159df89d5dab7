"""Weights on the wire: safetensors bytes (no pickles) in the engine's dtype, and the
checksum an engine must echo back after loading them. Shared by the learner (export), the
engine's worker extension (checksum of what arrived) and the league (members restored
from checkpoints), so neither `actors/` nor `learner/` imports the other."""

from __future__ import annotations

import hashlib

import torch
from safetensors.torch import save as save_safetensors

CHECKSUM_SCHEME = "sha256-bytes:"  # what state_checksum's digests start with


def state_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """Order-independent digest of named tensors: SHA-256 over each one's name, dtype, shape
    and bytes as held (in logical order), names sorted; prefixed by CHECKSUM_SCHEME. Hashing
    the held bytes, not a cast, costs one pass over the weights (a bf16 state hashes ~2.8x
    faster than through an fp32 copy); both sides hash the same tensors in the same dtype
    (the engine's: export_tensors casts before hashing)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        t = tensors[name].detach().contiguous().cpu()
        digest.update(f"{name}\0{t.dtype}\0{tuple(t.shape)}\0".encode())
        digest.update(t.reshape(-1).view(torch.uint8).numpy().data)
    return CHECKSUM_SCHEME + digest.hexdigest()


def legacy_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """The digest runs recorded before CHECKSUM_SCHEME (league members' checksums in an
    older run's league state): SHA-256 of names and fp32 values, names sorted, unprefixed.
    Read only to recognise such a member on resume (actors/league.py)."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().to(torch.float32).contiguous().cpu().numpy().data)
    return digest.hexdigest()


def same_weights(recorded: str, checksum: str, tensors) -> bool:
    """Whether weights whose state_checksum is `checksum` are the ones a run recorded as
    `recorded`, in either scheme (`tensors()` gives them, for a legacy record only)."""
    if recorded == checksum:
        return True
    return not recorded.startswith(CHECKSUM_SCHEME) and legacy_checksum(tensors()) == recorded


def export_tensors(state: dict[str, torch.Tensor], dtype: torch.dtype) -> tuple[dict[str, torch.Tensor], str]:
    """A model's named tensors (its state dict) in the engine's dtype, on the host, and
    their checksum."""
    # Always a copy: tied parameters (e.g. Qwen's embeddings) must not share storage (safetensors
    # refuses them), and what is sent must not be the live parameters the next step changes.
    # A bare .to() copies only when the dtype or device changes: a CPU learner exporting for
    # float32 engines would hand out its own parameters. Host memory whatever the device.
    tensors = {k: v.detach().to(device="cpu", dtype=dtype, copy=True).contiguous() for k, v in state.items()}
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
