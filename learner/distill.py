"""A policy table distilled into a model's weights: NFSP's supervised average network
(Heinrich & Silver 2016), fitted to the exact average policy instead of a reservoir of
the actions it played. The model is asked each state's prompt; the probability it gives an
action is the mass of the one-token replies that mean it, at the sampling temperature,
and the loss is the cross-entropy from the target (minimal where the model's policy is the
target's and no mass is left on illegal replies). Plain torch, no Ray."""

from __future__ import annotations

import tempfile
from collections import defaultdict
from pathlib import Path

import torch


def state_batches(inputs: list[tuple[str, int, list[int], list[int]]], pad_id: int):
    """(keys, input_ids [S, L] right-padded, last [S], reply_ids {action: [S, R] padded with
    -1}) from `inputs`: (state key, action, prompt ids, reply ids) for every reply of every
    state, the same prompt for all of a state's replies. Only one-token replies are read."""
    prompts: dict[str, list[int]] = {}
    replies: dict[str, dict[int, list[int]]] = defaultdict(lambda: defaultdict(list))
    for key, action, prompt, reply in inputs:
        if len(reply) != 1:
            raise ValueError(
                f"distill: state {key!r} has a reply of {len(reply)} tokens; one-token replies only"
            )
        if prompts.setdefault(key, list(prompt)) != list(prompt):
            raise ValueError(f"distill: state {key!r} is given two different prompts")
        replies[key][action].append(reply[0])
    keys = list(prompts)
    actions = sorted({a for k in keys for a in replies[k]})
    length = max(len(p) for p in prompts.values())
    ids = torch.full((len(keys), length), pad_id, dtype=torch.long)
    for i, k in enumerate(keys):
        ids[i, : len(prompts[k])] = torch.tensor(prompts[k])
    last = torch.tensor([len(prompts[k]) - 1 for k in keys])
    width = max(len(replies[k][a]) for k in keys for a in actions)
    reply_ids = {
        a: torch.tensor([replies[k][a] + [-1] * (width - len(replies[k][a])) for k in keys]) for a in actions
    }
    return keys, ids, last, reply_ids


def action_probs(model, ids, last, reply_ids, temperature: float = 1.0) -> torch.Tensor:
    """[S, A]: each state's probability of each action, the mass at `temperature` of the
    replies that mean it (what sampling the model gives; the rest is illegal replies)."""
    attention = (torch.arange(ids.shape[1]) <= last[:, None]).long()
    logits = model(input_ids=ids, attention_mask=attention).logits
    probs = torch.softmax(logits[torch.arange(len(ids)), last].float() / temperature, dim=-1)
    columns = []
    for a in sorted(reply_ids):
        r = reply_ids[a]
        columns.append((probs.gather(1, r.clamp(min=0)) * (r >= 0)).sum(-1))
    return torch.stack(columns, dim=-1)


def fit_policy_table(
    model,
    inputs: list[tuple[str, int, list[int], list[int]]],
    target: dict[str, list[float]],
    pad_id: int = 0,
    temperature: float = 1.0,
    lr: float = 1e-3,
    max_steps: int = 1000,
    tolerance: float = 2e-3,
) -> dict:
    """Train `model` (in place, full batch, Adam) until its policy at every state of
    `inputs` is within `tolerance` of target[key] (action probabilities, renormalised over
    the legal replies) and its illegal mass at `temperature` below `tolerance`, or for
    max_steps. Returns the steps taken, and the loss, the largest gap to the target and the
    largest illegal mass of the weights returned."""
    keys, ids, last, reply_ids = state_batches(inputs, pad_id)
    missing = [k for k in keys if k not in target]
    if missing:
        raise KeyError(f"distill: the target policy has no entry for {missing}")
    q = torch.tensor([target[k] for k in keys], dtype=torch.float32)
    opt = torch.optim.Adam([p for p in model.parameters() if p.requires_grad], lr=lr)
    model.train()
    step = 0
    while True:
        p = action_probs(model, ids, last, reply_ids, temperature)
        legal = p.sum(-1, keepdim=True)
        gap = (p / legal - q).abs().max().item()
        illegal = (1 - legal).max().item()
        loss = -(q * torch.log(p.clamp(min=1e-30))).sum(-1).mean()
        if (gap < tolerance and illegal < tolerance) or step == max_steps:
            break
        opt.zero_grad()
        loss.backward()
        opt.step()
        step += 1
    model.eval()
    return {"steps": step, "loss": loss.item(), "max_gap": gap, "max_illegal": illegal}


def fit_weights(
    blob: bytes,
    model_dir: Path,
    inputs: list[tuple[str, int, list[int], list[int]]],
    target: dict[str, list[float]],
    temperature: float,
    dtype: torch.dtype,
) -> tuple[bytes, str, dict]:
    """`blob` (safetensors weights of the model whose config and tokenizer files are in
    `model_dir`), loaded in float32 and fitted to `target` (fit_policy_table); returns the
    fitted weights in `dtype` as safetensors bytes, their checksum, and the fit."""
    from transformers import AutoModelForCausalLM

    from selfplay.best import write_model_dir
    from selfplay.weights import export_weights

    with tempfile.TemporaryDirectory() as d:
        write_model_dir(Path(d) / "model", Path(model_dir), blob, {})
        model = AutoModelForCausalLM.from_pretrained(Path(d) / "model", dtype=torch.float32)
    fit = fit_policy_table(
        model, inputs, target, pad_id=model.config.pad_token_id or 0, temperature=temperature
    )
    fitted, checksum = export_weights(model, dtype)
    return fitted, checksum, fit
