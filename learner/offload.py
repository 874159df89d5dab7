"""Optimiser-state offload for one learner (`learner.optimizer_offload`): ZeRO-Offload's
optimiser half (Ren et al. 2021; DeepSpeed's `offload_optimizer: {device: cpu}`). The
optimiser and an fp32 copy of every trained parameter live in host memory; the model on
the device keeps its weights and gradients. Each step copies the gradients to the host,
steps there, and copies the updated parameters back: the device no longer holds AdamW's
two moments (8 bytes per parameter), at the price of two copies over the host link and a
host-side step. A sharded group gets the same from FSDP2's `CPUOffloadPolicy`
(`learner.learner:shard`).

On a CPU learner there is nothing to free (the "device" is the host): the mechanism runs
and trains the same weights, at the cost of one more copy of the parameters."""

from __future__ import annotations

from collections.abc import Callable, Iterable

import torch

HOST = torch.device("cpu")  # where the offloaded state lives, whatever device the learner trains on


class OffloadedOptimizer:
    """Wraps the optimiser `make(host_params)` builds over host copies of `params`. Exposes
    what the learner uses of an optimiser (`param_groups`, `zero_grad`, `step`,
    `state_dict`, `load_state_dict`): the state dict is the wrapped optimiser's, keyed by
    parameter index in the same order, so a checkpoint loads with or without offload."""

    def __init__(self, params: Iterable[torch.nn.Parameter], make: Callable[[list], torch.optim.Optimizer]):
        self.params = list(params)
        # on a GPU: page-locked host copies (asynchronous transfers), synchronised each step
        self.on_gpu = any(p.device.type == "cuda" for p in self.params)
        self.host = []
        for p in self.params:
            copy = torch.empty(p.shape, dtype=torch.float32, device=HOST, pin_memory=self.on_gpu)
            copy.copy_(p.detach())
            self.host.append(torch.nn.Parameter(copy))
        self.optimizer = make(self.host)

    @property
    def param_groups(self) -> list[dict]:
        return self.optimizer.param_groups

    def zero_grad(self, set_to_none: bool = True) -> None:
        for p in self.params:
            if set_to_none:
                p.grad = None
            elif p.grad is not None:
                p.grad.zero_()
        self.optimizer.zero_grad(set_to_none=set_to_none)

    @torch.no_grad()
    def step(self) -> None:
        """Gradients to the host, the wrapped optimiser's step there, weights back. A
        parameter without a gradient is left to the optimiser as it would be on the device
        (AdamW skips it)."""
        for p, h in zip(self.params, self.host):
            h.grad = None if p.grad is None else p.grad.to(HOST, torch.float32, non_blocking=True)
        if self.on_gpu:
            torch.cuda.synchronize()  # the gradients have landed before the host reads them
        self.optimizer.step()
        for p, h in zip(self.params, self.host):
            p.copy_(h, non_blocking=True)

    def state_dict(self) -> dict:
        return self.optimizer.state_dict()

    def load_state_dict(self, state: dict) -> None:
        """The moments go to the host whatever device they were saved from (the wrapped
        optimiser casts state to its parameters' device)."""
        self.optimizer.load_state_dict(state)

    def sync_from_model(self) -> None:
        """The host copies from the device's weights: after the learner's weights are
        replaced outside the optimiser (a checkpoint's adapters loaded)."""
        with torch.no_grad():
            for p, h in zip(self.params, self.host):
                h.copy_(p)
