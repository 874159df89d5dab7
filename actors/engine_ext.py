"""Runs inside vLLM's worker process (named by `worker_extension_cls`). Weights arrive as
safetensors bytes, never pickles: collective_rpc serialises args with msgpack, where raw
tensors do not survive but bytes do."""

from __future__ import annotations

from safetensors.torch import load as load_safetensors

from selfplay.weights import state_checksum


class WeightReceiver:
    """vLLM worker extension: in-place weight reload without restarting the engine."""

    def receive_weights(self, blob: bytes) -> str:
        tensors = load_safetensors(blob)
        self.model_runner.reload_weights(weights_iterator=iter(tensors.items()))
        self._selfplay_checksum = state_checksum(tensors)
        return self._selfplay_checksum
