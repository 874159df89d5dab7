"""Runs inside vLLM's worker process (named by `worker_extension_cls`). Weights arrive as
safetensors bytes, never pickles: collective_rpc serialises args with msgpack, where raw
tensors do not survive but bytes do. A worker in the caller's own process (one worker, no
multiprocessing) also takes tensors as they are (a collective broadcast's)."""

from __future__ import annotations

import torch
from safetensors.torch import load as load_safetensors

from selfplay.weights import state_checksum

# Linux hands a process AMX tile registers only once it asks (arch_prctl
# ARCH_REQ_XCOMP_PERM). vLLM's CPU attention picks its AMX kernel whenever the CPU has the
# tiles but never asks; oneDNN asks only when one of its own matmuls first takes the AMX
# path. A worker whose first step is a short prompt (a few tokens: no AMX matmul yet) died
# in attention with SIGILL. Importing this module is the worker's first act (vLLM mixes the
# extension into its worker class), so the worker asks here. A no-op without AMX.
torch.cpu._init_amx()


class PartialLoad(RuntimeError):
    """Weights that do not cover the engine's parameters: refused before the load when a
    fused parameter lacks a shard; after it (the engine then holds a mix of old and new
    weights and must not sample again) when the model reports parameters unwritten."""


def missing_shards(engine_names, packed: dict[str, list[str]], sent) -> list[str]:
    """The checkpoint names a load lacks for the engine's fused parameters: vLLM stacks
    q/k/v into qkv_proj and gate/up into gate_up_proj (`packed_modules_mapping`) and
    reports the fused parameter loaded once any shard arrived, so a shard that never came
    would pass unseen. A fused parameter none of whose shards were sent is left to the
    coverage check after the load (its checkpoint names may differ in more than fusion)."""
    sent = set(sent)
    missing = []
    for name in sorted(engine_names):
        for fused, parts in packed.items():
            if f".{fused}." in name:
                shards = [name.replace(f".{fused}.", f".{part}.") for part in parts]
                if any(s in sent for s in shards):
                    missing += [s for s in shards if s not in sent]
                break
    return missing


class WeightReceiver:
    """vLLM worker extension: in-place weight reload without restarting the engine."""

    def receive_weights(self, blob: bytes) -> str:
        """`load_tensors` on the tensors of safetensors bytes."""
        return self.load_tensors(load_safetensors(blob))

    def load_tensors(self, tensors: dict[str, torch.Tensor]) -> str:
        """Load the weights and prove every engine parameter was written: vLLM's
        `reload_weights` only logs the parameters it skipped, so the names the model's
        `load_weights` reports as loaded are checked against the engine's own parameters
        (fused ones, qkv_proj and gate_up_proj, under their engine names; a fused one
        missing a shard is refused before anything is written). Returns the checksum of
        the tensors loaded. Called with tensors only in the engine's own process (a
        collective broadcast's, `Engine.load_tensors`)."""
        model = self.model_runner.get_model()
        expected = {name for name, _ in model.named_parameters()}
        lacking = missing_shards(expected, getattr(model, "packed_modules_mapping", {}), tensors)
        if lacking:  # refused before anything is written: the engine keeps its weights
            raise PartialLoad(f"weights lack {len(lacking)} shards of fused parameters (e.g. {lacking[:3]})")
        loaded: set[str] | None = None
        original = model.load_weights

        def load_weights(weights):
            nonlocal loaded
            names = original(weights)
            loaded = None if names is None else set(names)  # None: this model does not report them
            return names

        model.load_weights = load_weights  # shadows the method for this one reload
        try:
            self.model_runner.reload_weights(weights_iterator=iter(tensors.items()))
        finally:
            del model.load_weights
        missing = [] if loaded is None else sorted(expected - loaded)
        if missing:
            raise PartialLoad(
                f"weight load left {len(missing)} of {len(expected)} engine parameters unwritten "
                f"(e.g. {missing[:3]}): the sender's names do not match this model's"
            )
        return state_checksum(tensors)
