"""Runs inside vLLM's worker process (named by `worker_extension_cls`). Weights arrive as
safetensors bytes, never pickles: collective_rpc serialises args with msgpack, where raw
tensors do not survive but bytes do."""
from __future__ import annotations

import hashlib

import torch
from safetensors.torch import load as load_safetensors


def state_checksum(tensors: dict[str, torch.Tensor]) -> str:
    """Order-independent digest of named tensors, computed on fp32 values."""
    digest = hashlib.sha256()
    for name in sorted(tensors):
        digest.update(name.encode())
        digest.update(tensors[name].detach().to(torch.float32).contiguous().cpu().numpy().tobytes())
    return digest.hexdigest()


class WeightReceiver:
    """vLLM worker extension: in-place weight reload without restarting the engine."""

    def receive_weights(self, blob: bytes) -> str:
        tensors = load_safetensors(blob)
        self.model_runner.reload_weights(weights_iterator=iter(tensors.items()))
        self._selfplay_checksum = state_checksum(tensors)
        return self._selfplay_checksum
