"""The learner: a torch HF causal LM trained with PPO-clipped policy gradient on SPIRAL's
role-conditioned advantages, on GAE with a value head, or on the group-relative
advantages the buffer's builder wrote (task runs), and with NLL on rows labelled sft (the
supervised stage, rejection sampling); optional KL to a frozen reference, AdamW and
gradient clipping. Runs without Ray; `learner/actor.py` is its Ray shell."""

from __future__ import annotations

import contextlib
import copy
import json
import time
from collections import defaultdict
from pathlib import Path

import pyarrow as pa
import torch
import torch.distributed as dist
from safetensors.torch import load_file, load_model, save_file, save_model
from safetensors.torch import save as save_safetensors
from torch.nn.attention import SDPBackend, sdpa_kernel
from transformers import AutoModelForCausalLM, AutoTokenizer

from learner import losses
from learner.advantages import gae_advantages, role_conditioned_advantages, update_baselines
from learner.offload import OffloadedOptimizer
from learner.peak import compute_dtype, learner_peak_flops
from learner.schedule import ema_decay
from selfplay.config import LearnerConfig, ModelConfig
from selfplay.device import pick_device, resolve_dtype
from selfplay.files import write_atomic
from selfplay.games import MODULES
from selfplay.league import SELF
from selfplay.metrics import action_entropy, distinct_n
from selfplay.weights import export_tensors

REFERENCE = "reference.safetensors"  # the KL reference's weights, in a checkpoint
EMA = "ema.safetensors"  # the weights' moving average (learner.ema_decay) as trained, in a checkpoint
AVERAGED = "averaged"  # ... and as an HF model dir (LoRA merged), beside model/
LORA = "lora.safetensors"  # LoRA's adapters and the weights they adapt, in a checkpoint
ADAPTER = "default"  # the name of the one adapter with_lora makes (peft's default)
DTYPES = {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}


# The value head's opponent kinds (`learner.value_sees_opponent`): the learner itself, any
# league member, then every scripted player of the built-in games by name
OPPONENT_KINDS = [SELF, "member", *sorted({n for m in MODULES.values() for n in m.SCRIPTED})]


def policy_gradient(row: dict) -> bool:
    """Whether a row trains by policy gradient: labelled rl (or unlabelled: a game's turn);
    not sft (NLL), anchor (the KL to the reference alone) or dpo (a preference pair)."""
    return row["label"] not in ("sft", "anchor", "dpo")


def opponent_kind(opponent_id: str | None) -> int:
    """The kind index of a row's opponent: 0 self-play (and task rows, which have none), a
    scripted player's own index, else 1 (a league member)."""
    if opponent_id in (None, SELF):
        return 0
    return OPPONENT_KINDS.index(opponent_id) if opponent_id in OPPONENT_KINDS[2:] else 1


def collate(rows: list[dict], pad_id: int) -> dict[str, torch.Tensor]:
    """Turns -> right-padded prompt+response sequences. Position t of the [B, L-1] tensors
    holds the log-prob of token t+1, so response tokens sit at prompt_len-1 onwards."""
    seqs = [r["prompt_ids"] + r["response_ids"] for r in rows]
    length = max(len(s) for s in seqs)
    ids = torch.full((len(rows), length), pad_id, dtype=torch.long)
    attn = torch.zeros((len(rows), length), dtype=torch.long)
    mask = torch.zeros((len(rows), length - 1))
    behaviour = torch.zeros((len(rows), length - 1))
    state = torch.zeros(len(rows), dtype=torch.long)
    width = max((len(r.get("allowed_ids") or ()) for r in rows), default=0)
    allowed = torch.full((len(rows), max(width, 1)), -1, dtype=torch.long)
    for i, (r, s) in enumerate(zip(rows, seqs)):
        if r.get("allowed_ids"):
            allowed[i, : len(r["allowed_ids"])] = torch.tensor(r["allowed_ids"])
        ids[i, : len(s)] = torch.tensor(s)
        attn[i, : len(s)] = 1
        start, n = len(r["prompt_ids"]) - 1, len(r["response_ids"])
        mask[i, start : start + n] = 1
        behaviour[i, start : start + n] = torch.tensor(r["behaviour_logprobs"])
        state[i] = start
    # `state`: the last prompt token's position, whose hidden state the value head reads and
    # whose logits predict the reply's first token; `allowed`: the tokens that reply was
    # drawn from (legal-move masking; -1 padded, a row of -1: the whole vocabulary);
    # `opponent`: the opponent's kind, which column of an opponent-aware head gives V
    return {
        "input_ids": ids,
        "attention_mask": attn,
        "mask": mask,
        "behaviour_logp": behaviour,
        "state": state,
        "allowed": allowed,
        "opponent": torch.tensor([opponent_kind(r["opponent_id"]) for r in rows], dtype=torch.long),
    }


def math_attention(device_type: str, length: int, max_len: int) -> bool:
    """Whether a forward pass over `length`-token rows computes attention with PyTorch's
    math kernel (`learner.math_attention_max_len`): on the CPU, at most `max_len` tokens,
    where its backward beats the flash kernel's (1M-parameter Llama, bf16 autocast on 2
    cores: 0.40 s against 0.56 s a step at 24 tokens, 0.55 against 0.69 at 68; 1.46
    against 1.15 at 216, so longer rows keep flash; in float32, even at 24 tokens, 0.54
    against 0.52). GPUs pick their own kernels."""
    return device_type == "cpu" and length <= max_len


def sequence_logprobs(
    model, batch: dict[str, torch.Tensor], temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob and entropy [B, L-1] of each next token of `batch` (from `collate`) under
    `model` sampled at `temperature`, i.e. softmax(logits / T): the policy the generators
    sample from, whose log-probs vLLM reports in `processed_logprobs` mode."""
    logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
    return policy_logprobs(logits, batch, temperature)


def policy_logprobs(
    logits: torch.Tensor, batch: dict[str, torch.Tensor], temperature: float
) -> tuple[torch.Tensor, torch.Tensor]:
    """Log-prob and entropy [B, L-1] of each next token under softmax(logits / T), the first
    reply token's restricted to the tokens its row was sampled from where the engine masked
    them (`generator.legal_moves_only`)."""
    # in float32, as vLLM's sampler divides (a bf16 division added a rounding the engine's
    # log-probs do not have: up to 0.12 nats at T 0.7)
    scaled = logits[:, :-1].float() / temperature
    if "allowed" in batch:
        scaled = losses.restrict_logits(scaled, batch["state"], batch["allowed"])
    return losses.token_logprobs(scaled, batch["input_ids"][:, 1:])


def logprobs_and_values(
    model, value_head: torch.nn.Linear, batch: dict[str, torch.Tensor], temperature: float = 1.0
) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """`sequence_logprobs` plus V(s) [B] of each turn's state: `value_head` on the final
    (normed) hidden state of the last prompt token, from the same forward pass (a head with
    a column per opponent kind gives each turn its opponent's column)."""
    # through the model's own forward (not its decoder's alone), so a sharded model's outer
    # FSDP unit gathers the embeddings and head; the last hidden state is the normed one
    out = model(
        input_ids=batch["input_ids"], attention_mask=batch["attention_mask"], output_hidden_states=True
    )
    hidden, logits = out.hidden_states[-1], out.logits
    logp, entropy = policy_logprobs(logits, batch, temperature)
    rows = torch.arange(len(hidden), device=hidden.device)
    # in float32 whatever the autocast around it (under bf16 autocast the head's Linear cast
    # its input back: V(s) in bf16, 0.0078 apart near 1, so GAE's advantages moved by ~0.004)
    with torch.autocast(hidden.device.type, enabled=False):
        values = value_head(hidden[rows, batch["state"]].float())
    return logp, entropy, values[rows, batch["opponent"]] if values.shape[-1] > 1 else values.squeeze(-1)


def by_position(optimizer_state: dict) -> bool:
    """Whether an optimiser's saved state keys its parameters by position (torch.optim's own
    layout, a single learner's) rather than by name (a sharded group's)."""
    keys = [
        *optimizer_state.get("state", {}),
        *(p for g in optimizer_state.get("param_groups", []) for p in g["params"]),
    ]
    return any(isinstance(k, int) for k in keys)


def without_dropout(model: torch.nn.Module) -> torch.nn.Module:
    """`model` with every dropout at 0 (TRL's disable_dropout_in_model, and the attention's
    probability that Llama-like modules read from an attribute, not a module): the policy
    trains in train mode and the reference runs in eval mode, so a model with dropout made
    them differ before any update (DPO's margin, PPO's ratio and the KL biased at step 0),
    and vLLM samples without it."""
    for module in model.modules():
        if isinstance(module, torch.nn.Dropout):
            module.p = 0.0
        for name in ("attention_dropout", "dropout"):
            if isinstance(getattr(module, name, None), float):
                setattr(module, name, 0.0)
    return model


def with_lora(model, cfg: LearnerConfig):
    """`model` frozen, with rank-`lora_rank` adapters (peft) on the linear layers named by
    `lora_targets`, scaled by lora_alpha / lora_rank; B starts at zero, so the policy is
    unchanged until the first step."""
    from peft import LoraConfig, get_peft_model

    linear = {n.rsplit(".", 1)[-1] for n, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    unknown = sorted(set(cfg.lora_targets) - linear)
    if unknown:
        raise ValueError(
            f"learner.lora_targets: {unknown} name no linear layer of this model (its own: {sorted(linear)})"
        )
    head = model.get_output_embeddings()
    tied = [n for n, m in model.named_modules() if m is head and n.rsplit(".", 1)[-1] in cfg.lora_targets]
    if tied and model.config.tie_word_embeddings:  # the merged head would lose its delta when re-tied
        raise ValueError(
            f"learner.lora_targets: {tied[0]} is tied to the input embeddings in this model; leave it out"
        )
    config = LoraConfig(
        r=cfg.lora_rank,
        lora_alpha=cfg.lora_alpha,
        target_modules=list(cfg.lora_targets),
        lora_dropout=0.0,
        bias="none",
    )
    return get_peft_model(model, config)


def is_lora_key(key: str) -> bool:
    """A state-dict entry of a LoRA model that its merged model has not as such: an
    adapter's A or B, or the frozen weight it adapts (`...q_proj.base_layer.weight`)."""
    return ".lora_" in key or ".base_layer." in key


@torch.no_grad()
def merge_lora(state: dict[str, torch.Tensor], scale: float) -> dict[str, torch.Tensor]:
    """A LoRA model's weights (its peft base model's state dict: `X.base_layer.weight`,
    `X.lora_A.default.weight` [r, in], `X.lora_B.default.weight` [out, r]) merged into the
    plain model's names and shapes: each adapted `X.weight` as W + scale * B A (peft's own
    delta, in its order), every other tensor as it is. On whole tensors (a sharded learner
    gathers them first); `state` is consumed: each adapted weight, A and B leave it as
    they are merged, so a gathered copy is freed as the merged one is made."""
    merged = {}
    for key in list(state):
        if ".lora_" in key:  # an adapter's A or B: popped with the weight it adapts
            continue
        value = state.pop(key)
        if key.endswith(".base_layer.weight"):
            prefix = key.removesuffix(".base_layer.weight")
            a, b = (
                state.pop(f"{prefix}.lora_A.{ADAPTER}.weight"),
                state.pop(f"{prefix}.lora_B.{ADAPTER}.weight"),
            )
            value = value + ((b @ a) * scale).to(value.dtype)
        merged[key.replace(".base_layer.", ".")] = value
    return merged


def opponent_results(rows: list[dict]) -> dict[str, float]:
    """The batch's games against each opponent other than itself (scripted training
    opponents, league members), per game: `train/GAME/OPPONENT/{win,non_loss,games}`, each
    game counted once (its outcome for the learner's seat). Evaluations stay apart (eval/)."""
    final: dict[tuple[str, str], dict[str, float]] = defaultdict(dict)
    for r in rows:
        if r["opponent_id"] != SELF and r["task"] is None:
            final[(r["game"], r["opponent_id"])][r["traj_id"]] = r["outcome"]
    out = {}
    for (game, opponent), by_game in sorted(final.items()):
        o = list(by_game.values())
        out[f"train/{game}/{opponent}/win"] = sum(x > 0 for x in o) / len(o)
        out[f"train/{game}/{opponent}/non_loss"] = sum(x >= 0 for x in o) / len(o)
        out[f"train/{game}/{opponent}/games"] = len(o)
    return out


def even_spans(start: int, stop: int, parts: int) -> list[tuple[int, int]]:
    """[start, stop) cut into `parts` consecutive spans whose sizes differ by at most one
    (the first ones larger); a span is empty when there are fewer items than parts."""
    n = stop - start
    bounds = [start]
    for i in range(parts):
        bounds.append(bounds[-1] + n // parts + (1 if i < n % parts else 0))
    return list(zip(bounds[:-1], bounds[1:]))


def rank_spans(n_rows: int, size: int, rank: int, world: int) -> list[tuple[int, int]]:
    """The micro-batches (row spans) rank `rank` of `world` trains of an `n_rows` batch:
    its near-equal share of the rows, cut into as many micro-batches of at most `size` as
    the largest share needs, so every rank runs the same number of forward passes (FSDP's
    collectives pair them up). A span may be empty when the batch is tiny."""
    largest = -(-n_rows // world)
    return even_spans(*even_spans(0, n_rows, world)[rank], max(-(-largest // size), 1))


def shard(module: torch.nn.Module, offload: bool = False) -> None:
    """FSDP2 (`fully_shard`) over the default process group: each decoder layer its own
    unit (its parameters gathered only while it runs), then the rest of the module.
    `offload`: FSDP2's CPUOffloadPolicy, the shards of weights, gradients and optimiser
    state kept in host memory and copied to the device per unit as it runs (the
    optimiser steps on the host); on a CPU group the host is the device."""
    from torch.distributed.fsdp import CPUOffloadPolicy, OffloadPolicy, fully_shard

    device = next(module.parameters()).device
    policy = CPUOffloadPolicy(pin_memory=device.type == "cuda") if offload else OffloadPolicy()
    decoder = module.get_decoder() if hasattr(module, "get_decoder") else None
    for layer in getattr(decoder, "layers", []):
        fully_shard(layer, offload_policy=policy)
    fully_shard(module, offload_policy=policy)


def all_reduced(sums: dict[str, float], names: list[str]) -> defaultdict:
    """A sharded group's sums of `names` over every rank (each rank summed its own share),
    reduced in the one order `names` gives, the same on every rank (a collective)."""
    total = torch.tensor([sums[n] for n in names], dtype=torch.float64)
    dist.all_reduce(total)
    return defaultdict(float, zip(names, total.tolist()))


def full(tensor: torch.Tensor) -> torch.Tensor:
    """A tensor whole on every rank (a sharded DTensor gathered: a collective), else as it is."""
    return tensor.full_tensor() if hasattr(tensor, "full_tensor") else tensor


class Learner:
    def __init__(
        self,
        cfg: LearnerConfig,
        model_cfg: ModelConfig,
        model_path: str,
        seed: int,
        temperature: float = 1.0,
        sharded: bool = False,
    ):
        """`temperature`: the generators' sampling temperature; the policy trained is the
        one sampled, softmax(logits / T), so PPO's ratio compares like with like.
        `sharded`: this is one rank of a data-parallel learner group over torch.distributed's
        default process group (gloo on CPUs, NCCL on GPUs), the model, value head and
        reference sharded by FSDP2; every rank is handed the same batch and trains its share
        of it, and every rank must make the same calls (train_step, export)."""
        if not temperature > 0:
            raise ValueError(
                f"generator.temperature: training samples need a temperature > 0, got {temperature}"
            )
        self.sharded = sharded
        self.rank, self.world = (dist.get_rank(), dist.get_world_size()) if sharded else (0, 1)
        # torch's own setter: an in-process vLLM engine started in this process before (the sync
        # loop, make bench's arms) replaced torch.set_num_threads with a no-op for the whole
        # process, and the learner trained on whatever thread count was left
        torch._C.set_num_threads(cfg.threads)
        torch.manual_seed(seed)
        self.cfg = cfg
        self.temperature = temperature
        self.device = pick_device(cfg.device)
        self.engine_dtype = DTYPES[resolve_dtype(model_cfg.dtype)]
        # bf16 autocast: as asked, or (auto) where the device computes bf16 natively
        self.autocast = compute_dtype(self.device.type, cfg.bf16) == torch.bfloat16
        self.peak_flops = learner_peak_flops(cfg, self.device)  # what MFU is read against
        self.model = AutoModelForCausalLM.from_pretrained(model_path, dtype=torch.float32).to(self.device)
        if cfg.lora_rank:
            self.model = with_lora(self.model, cfg)
        without_dropout(self.model)
        self.tokenizer = AutoTokenizer.from_pretrained(model_path)  # saved with every checkpoint
        self.model.train()
        self.pad_id = self.model.config.pad_token_id or 0
        self.ref = None
        if cfg.kl_coef > 0 or cfg.reference or cfg.anchor_coef > 0:
            self.ref = copy.deepcopy(self.model).eval().requires_grad_(False)
        # the weights' moving average: a copy of the model (as the reference), updated after
        # each step; with LoRA, of its adapters (the base weights are frozen)
        self.ema = copy.deepcopy(self.model).eval().requires_grad_(False) if cfg.ema_decay else None
        if cfg.gradient_checkpointing:  # recompute each layer's activations in backward
            self.model.gradient_checkpointing_enable(gradient_checkpointing_kwargs={"use_reentrant": False})
        if cfg.compile:  # in place: the module, its parameters and its state_dict keys stay as they are
            self.model.compile(dynamic=True)
        params = [p for p in self.model.parameters() if p.requires_grad]  # LoRA: the adapters alone
        self.value_head = None
        if cfg.advantage == "gae":  # a zero-initialised linear value head on the shared trunk
            columns = len(OPPONENT_KINDS) if cfg.value_sees_opponent else 1
            self.value_head = torch.nn.Linear(self.model.config.hidden_size, columns).to(self.device)
            torch.nn.init.zeros_(self.value_head.weight)
            torch.nn.init.zeros_(self.value_head.bias)
        if sharded:  # after sharding, the optimiser holds each rank's shards
            # the trained weights and their average offloaded alike (kept where they are averaged)
            offload = cfg.optimizer_offload
            modules = (
                (self.model, offload),
                (self.ref, False),
                (self.ema, offload),
                (self.value_head, offload),
            )
            for module, offloaded in modules:
                if module is not None:
                    shard(module, offload=offloaded)
            params = [p for p in self.model.parameters() if p.requires_grad]
        if self.value_head is not None:
            params += list(self.value_head.parameters())
        self.params = params  # what the optimiser trains and the gradient clip measures
        own = dict(self.model.named_parameters())  # (average, trained weight) pairs, shard by shard
        self.ema_pairs = (
            [(e, own[n]) for n, e in self.ema.named_parameters() if own[n].requires_grad]
            if self.ema is not None
            else []
        )

        def adamw(trained: list) -> torch.optim.Optimizer:
            return torch.optim.AdamW(trained, lr=cfg.lr, weight_decay=cfg.weight_decay)

        # optimiser state on the host: one learner's by OffloadedOptimizer, a group's by FSDP2
        offload = cfg.optimizer_offload and not sharded
        self.opt = OffloadedOptimizer(params, adamw) if offload else adamw(params)
        # model FLOPs per token, forward and backward: 6 per non-embedding parameter trained (as
        # nanochat and PaLM count MFU; attention's share is small at these lengths), 4 per frozen
        # one (LoRA's base weights: forward and the activations' gradient, no weight gradient)
        embed = self.model.get_input_embeddings().weight  # a DTensor's numel is the whole's
        self.flops_per_token = sum(
            (6 if p.requires_grad else 4) * p.numel() for p in self.model.parameters() if p is not embed
        )
        self.step = 0
        self.version = 0
        self.baselines: dict[tuple[str, int], float] = {}

    def _micro_batches(self, n: int, size: int) -> list[tuple[int, int, float]]:
        """(start, stop, weight) of each micro-batch of at most `size` rows this learner trains
        of an n-row batch: all of them, or in a sharded group its own share, in as many
        passes as every other rank. FSDP averages gradients over the ranks and the step wants
        their sum, so each pass's loss weighs the group's size; a rank whose share is empty
        still runs its passes, on the batch's first row weighing nothing (weight 0)."""
        if not self.sharded:
            return [(i, min(i + size, n), 1.0) for i in range(0, n, size)]
        return [
            (start, stop, float(self.world)) if stop > start else (0, 1, 0.0)
            for start, stop in rank_spans(n, size, self.rank, self.world)
        ]

    def _compute(self, batch: dict[str, torch.Tensor]) -> contextlib.ExitStack:
        """A forward pass's context over `batch`: bf16 autocast where the learner computes
        in it, and the attention kernel `math_attention` picks for the batch's length (the
        default kernel under gradient checkpointing)."""
        stack = contextlib.ExitStack()
        stack.enter_context(torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast))
        # not under gradient checkpointing: its recompute in backward runs outside this context,
        # on the default kernel, and must see the forward's tensors
        length = batch["input_ids"].shape[1]
        checkpointing = getattr(self._plain(), "is_gradient_checkpointing", False)
        if not checkpointing and math_attention(self.device.type, length, self.cfg.math_attention_max_len):
            stack.enter_context(sdpa_kernel(SDPBackend.MATH))
        return stack

    def _forward(self, rows: list[dict], anchored: bool = False):
        """One micro-batch's forward pass: its batch (on the device), the policy's log-probs
        and entropies (with gradient when the caller has it on), V(s) (gae) and the KL
        reference's log-probs (when there is a KL term, or `anchored`: the step's batch, which
        every rank of a sharded group holds, has rows labelled anchor, so every rank runs the
        reference alike; a reference kept only for preference pairs is not read here)."""
        batch = {k: v.to(self.device) for k, v in collate(rows, self.pad_id).items()}
        values = ref_logp = None
        with self._compute(batch):
            if self.value_head is None:
                logp, entropy = sequence_logprobs(self.model, batch, self.temperature)
            else:
                logp, entropy, values = logprobs_and_values(
                    self.model, self.value_head, batch, self.temperature
                )
        if self._kl or anchored:
            ref_logp = self._reference_logprobs(rows, batch, logp)
        return batch, logp, entropy, values, ref_logp

    @torch.no_grad()
    def _reference_logprobs(self, rows: list[dict], batch: dict[str, torch.Tensor], logp) -> torch.Tensor:
        """The reference's log-probs [B, L-1] of a micro-batch: of every row where the KL term
        reads them all (and in a sharded group, whose ranks must run the reference alike);
        else of its rows labelled anchor alone, in a batch of their own (right-padded, so
        their positions are the same), the other rows holding the policy's own (a KL of 0)."""
        if self._kl or self.sharded:
            with self._compute(batch):
                return sequence_logprobs(self.ref, batch, self.temperature)[0]
        ref_logp = logp.detach().clone()
        anchors = [i for i, r in enumerate(rows) if r["label"] == "anchor"]
        if anchors:
            sub = {k: v.to(self.device) for k, v in collate([rows[i] for i in anchors], self.pad_id).items()}
            with self._compute(sub):
                part, _ = sequence_logprobs(self.ref, sub, self.temperature)
            ref_logp[anchors, : part.shape[1]] = part.to(ref_logp.dtype)
        return ref_logp

    @property
    def _kl(self) -> bool:
        """Whether there is a KL term (kl_coef > 0 always builds the reference)."""
        return self.cfg.kl_coef > 0

    @property
    def _kl_in_reward(self) -> bool:
        return self._kl and self.cfg.kl_placement == "reward"

    def _penalty(self, logp, ref_logp, mask) -> torch.Tensor | None:
        """Each turn's KL penalty, its estimate summed over its tokens, where it goes in the
        reward (kl_placement reward); no gradient through it."""
        if not self._kl_in_reward:
            return None
        return (losses.kl_estimate(logp.detach(), ref_logp, self.cfg.kl_estimator) * mask).sum(1)

    def _plan(self, rows, values, penalty) -> tuple[torch.Tensor, torch.Tensor | None]:
        """The batch's advantages [B] (after the KL penalty and normalisation) and value
        targets (gae), from every row's V(s) and KL penalty: computed once per step."""
        advantages, targets = self._advantages(rows, values)
        adv = torch.tensor(advantages, device=self.device)
        if penalty is not None:
            adv = adv - self.cfg.kl_coef * penalty
        # rows no policy gradient trains (sft, anchor) hold 0 and are not normalised over
        untrained = torch.tensor([not policy_gradient(r) for r in rows], device=self.device)
        if self.cfg.normalize_advantages and int((~untrained).sum()) > 1:  # over the sampled replies
            rl = adv[~untrained]
            adv = torch.where(untrained, 0.0, (adv - rl.mean()) / (rl.std() + 1e-8))
        return adv, None if targets is None else torch.tensor(targets, device=self.device)

    def _prepass(self, chunks: list[list[dict]]) -> tuple[torch.Tensor | None, torch.Tensor | None]:
        """Every row's V(s) and KL penalty, without gradient, one micro-batch at a time: what
        the plan reads before the first micro-batch's loss (gae, or a KL penalty in the
        reward), when the batch trains in more than one micro-batch."""
        values, penalties = [], []
        with torch.no_grad():
            for chunk in chunks:
                batch, logp, _, v, ref_logp = self._forward(chunk)
                values.append(v)
                penalties.append(self._penalty(logp, ref_logp, batch["mask"]))
        return (
            None if values[0] is None else torch.cat(values),
            None if penalties[0] is None else torch.cat(penalties),
        )

    def train_step(self, table: pa.Table) -> dict:
        """One update on the batch's trainable turns, in micro-batches of
        `learner.micro_batch_size` turns whose gradients accumulate: every loss term divides
        by the batch's count (tokens, rows, pairs), so the update is the one-pass update.
        Rows labelled dpo (preference pairs) train `learner.preference_loss` against the
        reference; every other row trains policy gradient or NLL (`_policy_backward`)."""
        start = time.perf_counter()
        rows = [r for r in table.to_pylist() if r["trainable"] and r["response_ids"]]
        if not rows:
            raise ValueError("train_step: batch holds no trainable turns")
        pairs = [r for r in rows if r["label"] == "dpo"]
        others = [r for r in rows if r["label"] != "dpo"]
        self.opt.zero_grad(set_to_none=True)
        metrics: dict = {}
        if pairs:
            metrics.update(self._preference_backward(pairs))
        if others:
            metrics.update(self._policy_backward(others))
        # grad_clip 0: no clipping, as 0 turns off the other terms (a limit of 0 zeroed every
        # gradient: no update at all); the norm is measured either way
        limit = self.cfg.grad_clip if self.cfg.grad_clip > 0 else float("inf")
        grad_norm = torch.nn.utils.clip_grad_norm_(self.params, limit)
        self.opt.step()
        self.step += 1
        self._update_average()
        if self.cfg.ref_refresh_every and self.step % self.cfg.ref_refresh_every == 0:
            self.reset_reference()  # the reference follows the policy (a SPIN iteration ends)
        step_s = time.perf_counter() - start
        tokens = int(metrics.pop("tokens", 0) + metrics.pop("pair_tokens", 0))
        texts = [r["response_text"] for r in rows]
        metrics.update(
            step=self.step,
            loss=metrics.get("loss", 0.0)
            + metrics.get("preference_loss", 0.0)
            + self.cfg.chosen_nll_coef * metrics.get("chosen_nll", 0.0),
            grad_norm=full(grad_norm).item(),
            lr=self.opt.param_groups[0]["lr"],  # the rate this step took (learner.lr_schedule)
            batch_turns=len(rows),
            batch_illegal=sum(r["illegal"] for r in rows) / len(rows),
            step_s=step_s,
            tokens=tokens,
            # model FLOPs utilisation: useful FLOPs per second against learner.peak_tflops
            mfu=self.flops_per_token * tokens / step_s / self.peak_flops,
            distinct_1=distinct_n(texts, 1),
            distinct_2=distinct_n(texts, 2),
        )
        return metrics

    def _preference_backward(self, pairs: list[dict]) -> dict:
        """Accumulate the gradient of the preference loss over `pairs` (rows labelled dpo:
        `response_ids` chosen, `rejected_ids` rejected), both replies of a micro-batch in one
        forward pass, the reference's log-probs without gradient; plus chosen_nll_coef times
        the NLL of the chosen replies (per token). Returns the pairs' metrics."""
        if self.ref is None:
            raise ValueError("train_step: rows labelled dpo need a reference; set learner.reference true")
        missing = [r["traj_id"] for r in pairs if not r["rejected_ids"]]
        if missing:
            raise ValueError(
                f"train_step: {len(missing)} dpo rows have no rejected reply (e.g. {missing[0]})"
            )
        size = self.cfg.micro_batch_size or len(pairs)
        chosen_tokens = sum(len(r["response_ids"]) for r in pairs)
        sums: dict[str, float] = defaultdict(float)
        for start, stop, weight in self._micro_batches(len(pairs), size):
            empty = weight == 0.0
            chunk = pairs[start:stop]
            rejected = [
                {**r, "response_ids": r["rejected_ids"], "behaviour_logprobs": [0.0] * len(r["rejected_ids"])}
                for r in chunk
            ]
            batch = {k: v.to(self.device) for k, v in collate(chunk + rejected, self.pad_id).items()}
            mask = batch["mask"]
            with self._compute(batch):
                logp, _ = sequence_logprobs(self.model, batch, self.temperature)
            with torch.no_grad(), self._compute(batch):
                ref_logp, _ = sequence_logprobs(self.ref, batch, self.temperature)
            seq, ref_seq, lengths = (logp * mask).sum(1), (ref_logp * mask).sum(1), mask.sum(1)
            n = len(chunk)
            loss, margin = losses.preference_loss(
                seq[:n],
                seq[n:],
                ref_seq[:n],
                ref_seq[n:],
                self.cfg.beta,
                self.cfg.preference_loss,
                lengths[:n],
                lengths[n:],
            )
            loss = loss.sum() / len(pairs)
            nll = losses.nll_loss(logp[:n], mask[:n], chosen_tokens)
            total = loss + self.cfg.chosen_nll_coef * nll if self.cfg.chosen_nll_coef else loss
            (total * weight).backward()
            if empty:
                continue
            sums["preference_loss"] += loss.item()
            sums["chosen_nll"] += nll.item()
            sums["chosen_logratio"] += (seq[:n] - ref_seq[:n]).detach().sum().item() / len(pairs)
            sums["rejected_logratio"] += (seq[n:] - ref_seq[n:]).detach().sum().item() / len(pairs)
            sums["pair_tokens"] += int(batch["attention_mask"].sum())
            sums["margin"] += margin.sum().item()
            sums["ordered"] += (margin > 0).sum().item()  # pairs the implicit reward orders right
        if self.sharded:
            names = ["preference_loss", "chosen_nll", "chosen_logratio", "rejected_logratio", "pair_tokens"]
            sums = all_reduced(sums, [*names, "margin", "ordered"])
        return {
            **{k: v for k, v in sums.items() if k not in ("margin", "ordered")},
            "pairs": len(pairs),
            "reward_margin": sums["margin"] / len(pairs),
            "reward_accuracy": sums["ordered"] / len(pairs),
        }

    def _policy_backward(self, rows: list[dict]) -> dict:
        """Accumulate the gradient of policy gradient (PPO-clipped), NLL (rows labelled sft)
        and the anchor's KL (rows labelled anchor) over `rows`, with the KL and value terms
        where configured. Returns their metrics."""
        size = self.cfg.micro_batch_size or len(rows)
        chunks = [rows[i : i + size] for i in range(0, len(rows), size)]
        sft = [r["label"] == "sft" for r in rows]
        anchor = [r["label"] == "anchor" for r in rows]
        pg = [policy_gradient(r) for r in rows]
        rl_rows = pg.count(True)
        rl_tokens = sum(len(r["response_ids"]) for r, p in zip(rows, pg) if p)
        sft_tokens = sum(len(r["response_ids"]) for r, s in zip(rows, sft) if s)
        anchor_tokens = sum(len(r["response_ids"]) for r, a in zip(rows, anchor) if a)
        if any(anchor) and not self.cfg.anchor_coef > 0:
            raise ValueError(
                f"train_step: {anchor.count(True)} rows labelled anchor train only the KL to the "
                "reference, and learner.anchor_coef is 0 (set it with builder.anchored_roles)"
            )
        per_target = self.cfg.nll_aggregation == "sequence_mean"
        sft_total = sum(1 for r, s in zip(rows, sft) if s and r["response_ids"]) if per_target else sft_tokens
        all_tokens = rl_tokens + sft_tokens + anchor_tokens
        reads_model = self.value_head is not None or self._kl_in_reward
        all_values = None
        if self.sharded:  # every rank plans the whole batch, then trains its own share of it
            all_values, penalties = self._prepass(chunks) if reads_model else (None, None)
            plan = self._plan(rows, all_values, penalties)
        else:
            plan = self._plan(rows, *self._prepass(chunks)) if len(chunks) > 1 and reads_model else None

        sums: dict[str, float] = defaultdict(float)
        values_seen = []
        for start, stop, weight in self._micro_batches(len(rows), size):
            empty = weight == 0.0
            chunk, offset = rows[start:stop], start
            part: dict[str, float] = {}  # this micro-batch's share of the sums (none when empty)
            batch, logp, entropy, values, ref_logp = self._forward(chunk, anchored=anchor_tokens > 0)
            mask = batch["mask"]
            if plan is None:  # one micro-batch: the pass that trains gives what the plan reads
                plan = self._plan(
                    rows, None if values is None else values.detach(), self._penalty(logp, ref_logp, mask)
                )
            adv, targets = plan[0][offset : offset + len(chunk)], plan[1]
            is_sft = torch.tensor(sft[offset : offset + len(chunk)], device=self.device)
            is_pg = torch.tensor(pg[offset : offset + len(chunk)], device=self.device)
            rl_mask = mask * is_pg[:, None]  # policy gradient and KL: the rows it trains (rl, a game's)
            pg_loss, clip_frac = losses.ppo_clip_loss(
                logp,
                batch["behaviour_logp"],
                adv,
                rl_mask,
                self.cfg.clip_eps,
                self.cfg.loss_aggregation,
                totals=(rl_tokens, rl_rows),
            )
            nll = losses.nll_loss(logp, mask * is_sft[:, None], sft_total, self.cfg.nll_aggregation)
            bonus = losses.masked_mean(entropy, rl_mask, rl_tokens)  # the entropy bonus: sampled replies only
            loss = pg_loss + nll - self.cfg.entropy_coef * bonus
            if anchor_tokens:  # SCoRe's stage I: k2, the gradient of KL(pi || ref), on the anchor's tokens
                is_anchor = torch.tensor(anchor[offset : offset + len(chunk)], device=self.device)
                anchor_mask = mask * is_anchor[:, None]
                kl_anchor = losses.kl_loss(
                    logp, ref_logp, batch["behaviour_logp"], anchor_mask, "k2", anchor_tokens
                )
                loss = loss + self.cfg.anchor_coef * kl_anchor
                part["kl_anchor"] = losses.kl_penalty(
                    logp.detach(), ref_logp, anchor_mask, anchor_tokens
                ).item()
            if self._kl:
                part["kl_ref"] = losses.kl_penalty(logp.detach(), ref_logp, rl_mask, rl_tokens).item()
                if self.cfg.kl_placement == "loss":
                    kl_term = losses.kl_loss(
                        logp, ref_logp, batch["behaviour_logp"], rl_mask, self.cfg.kl_estimator, rl_tokens
                    )
                    loss = loss + self.cfg.kl_coef * kl_term
            if values is not None:
                value_loss = 0.5 * ((values - targets[offset : offset + len(chunk)]) ** 2).sum() / len(rows)
                loss = loss + self.cfg.value_coef * value_loss
                part["value_loss"] = value_loss.item()
            (loss * weight).backward()
            if empty:
                continue
            for name, value in part.items():
                sums[name] += value
            if values is not None:
                values_seen.append(values.detach())
            with torch.no_grad():
                log_ratio = (batch["behaviour_logp"] - logp) * rl_mask
            sums["loss"] += loss.item()
            sums["pg_loss"] += pg_loss.item()
            sums["nll"] += nll.item()
            sums["clip_frac"] += clip_frac.item()
            sums["entropy"] += losses.masked_mean(entropy.detach(), mask, all_tokens).item()  # every token
            sums["kl_behaviour"] += log_ratio.sum().item() / max(rl_tokens, 1)
            sums["tokens"] += int(batch["attention_mask"].sum())
        if self.sharded:
            names = ["loss", "pg_loss", "nll", "clip_frac", "entropy", "kl_behaviour", "tokens"]
            names += ["kl_ref"] * self._kl + ["value_loss"] * (self.value_head is not None)
            names += ["kl_anchor"] * (self.cfg.anchor_coef > 0)
            sums = all_reduced(sums, names)
            values_seen = [] if all_values is None else [all_values]

        # staleness of the sampled replies (a labelled sft row has none) and advantages of
        # those trained by policy gradient (an anchor row has none)
        sampled = [i for i, s in enumerate(sft) if not s] or list(range(len(rows)))
        versions = torch.tensor(
            [rows[i]["policy_version"] for i in sampled], dtype=torch.float32
        )  # on the host
        adv = plan[0][[i for i in sampled if pg[i]] or sampled]
        metrics = {
            "loss": sums["loss"],
            "pg_loss": sums["pg_loss"],
            "kl_behaviour": sums["kl_behaviour"],
            "nll": sums["nll"],
            "sft_rows": sft.count(True),
            "entropy": sums["entropy"],
            "clip_frac": sums["clip_frac"],
            "adv_mean": adv.mean().item(),
            "adv_std": adv.std().item() if len(adv) > 1 else 0.0,
            "staleness_mean": (self.version - versions).mean().item(),
            "staleness_max": (self.version - versions).max().item(),
            "micro_batches": len(chunks),
            "tokens": sums["tokens"],
        }
        if self._kl:
            metrics["kl_ref"] = sums["kl_ref"]
        if any(anchor):
            metrics.update(anchor_rows=anchor.count(True), kl_anchor=sums["kl_anchor"])
        for (game, role), b in self.baselines.items():
            metrics[f"baseline_{game}_{role}"] = b
        if values_seen:
            v, g = torch.cat(values_seen), plan[1]
            metrics.update(value_loss=sums["value_loss"], value_mean=v.mean().item())
            if len(g) > 1:  # a variance needs two returns (one gave NaN)
                # 1 - Var(G - V) / Var(G): how much of the return's spread the value explains
                metrics["explained_variance"] = (1 - (g - v).var() / g.var().clamp(min=1e-8)).item()
        scored = [r for r in rows if r["task"] is not None and policy_gradient(r)]
        if scored:  # a task's sampled replies in the batch: their mean reward (after the builder's filter)
            metrics["batch_reward"] = sum(r["reward"] for r in scored) / len(scored)
            roles = sorted({r["role"] for r in scored})
            for role in roles if len(roles) > 1 else ():  # a task with roles (solver_checker): each's
                mine = [r["reward"] for r in scored if r["role"] == role]
                metrics[f"batch_reward/role_{role}"] = sum(mine) / len(mine)
        metrics.update(opponent_results(rows))
        for game in sorted({r["game"] for r in rows}):
            metrics[f"action_entropy/{game}"] = action_entropy(
                [r["response_text"] for r in rows if r["game"] == game]
            )
        return metrics

    def _advantages(self, rows: list[dict], values: torch.Tensor | None) -> tuple[list[float], list | None]:
        """Each row's advantage by `learner.advantage` (0 on sft rows, which train NLL, and
        anchor rows, the KL alone), and the value targets (gae only)."""
        if self.cfg.advantage == "group":  # the builder's, on the buffer's side
            missing = [r["traj_id"] for r in rows if policy_gradient(r) and r["advantage"] is None]
            if missing:
                raise ValueError(
                    f"learner.advantage group: {len(missing)} rows have no builder advantage "
                    f"(e.g. {missing[0]}); task runs build them in the buffer"
                )
            return [r["advantage"] if policy_gradient(r) else 0.0 for r in rows], None
        keys = [(r["game"], r["role"]) for r in rows]
        returns = [r["ret"] for r in rows]
        if values is None:
            # SPIRAL's order: the advantage reads the baseline before this batch updates it.
            advantages = role_conditioned_advantages(keys, returns, self.baselines)
            self.baselines = update_baselines(
                self.baselines, keys, returns, self.cfg.baseline_alpha, games=[r["traj_id"] for r in rows]
            )
            return advantages, None
        groups = [(r["traj_id"], r["role"]) for r in rows]
        turns = [r["turn"] for r in rows]
        return gae_advantages(
            groups, turns, returns, values.detach().tolist(), self.cfg.gae_lambda, self.cfg.gamma
        )

    @torch.no_grad()
    def _update_average(self) -> None:
        """learner.ema_decay: average <- decay * average + (1 - decay) * weights, at this
        step's warmed-up decay (learner/schedule.py:ema_decay)."""
        if self.ema is None:
            return
        weight = 1.0 - ema_decay(self.cfg.ema_decay, self.step)
        for average, trained in self.ema_pairs:
            average.lerp_(trained.detach(), weight)

    def reset_reference(self) -> bool:
        """Make the current policy the reference (a task run's supervised stage ends: the
        policy it produced is the KL anchor, as SFT -> RL pipelines use the SFT model, and
        SPIN's first iterate). Whether there is a reference (kl_coef > 0, reference or
        anchor_coef > 0)."""
        if self.ref is None:
            return False
        self.ref.load_state_dict(self.model.state_dict())
        return True

    def set_lr(self, lr: float) -> None:
        """Every parameter group's learning rate from now on (a stage of the run changes it:
        the supervised stage's `sft.lr`, then `learner.lr`); the optimiser's moments stay."""
        for group in self.opt.param_groups:
            group["lr"] = lr

    def policy_state(self, averaged: bool = False) -> dict[str, torch.Tensor]:
        """The policy's weights under the HF model's own names: with LoRA, every adapted
        weight merged (W + scale B A), as engines and checkpoints hold them. A sharded
        learner gathers them from every rank's shards: each rank must ask; rank 0 alone keeps
        them (another rank gets {}, having held one gathered tensor at a time). `averaged`:
        the weights' moving average instead (learner.ema_decay)."""
        state = self._gathered(self._plain(self._averaged(averaged)).state_dict().items())
        if self.cfg.lora_rank and state:
            return merge_lora(state, self.cfg.lora_alpha / self.cfg.lora_rank)
        return state

    def _gathered(self, items) -> dict[str, torch.Tensor]:
        """(name, tensor) pairs whole, on rank 0 (every rank takes part in each gather; the
        others drop each tensor as it is gathered and return {})."""
        state = {}
        for key, value in items:
            whole = full(value)
            if self.rank == 0:
                state[key] = whole
        return state

    def _averaged(self, averaged: bool) -> torch.nn.Module:
        """The trained model, or (`averaged`) its moving average; refused when none is kept."""
        if not averaged:
            return self.model
        if self.ema is None:
            raise ValueError("the weights' average: none is kept (learner.ema_decay is 0)")
        return self.ema

    def _plain(self, module: torch.nn.Module | None = None) -> torch.nn.Module:
        """The HF model (with LoRA, peft's base model: its linear layers hold the adapters);
        `module`: the trained model (default) or its average."""
        module = self.model if module is None else module
        return module.get_base_model() if self.cfg.lora_rank else module

    def _lora_state(self) -> dict[str, torch.Tensor]:
        """LoRA's adapters and the weights they adapt, whole (gathered: each rank must ask;
        rank 0's, as policy_state)."""
        state = self._gathered((k, v) for k, v in self.model.state_dict().items() if is_lora_key(k))
        return {k: v.contiguous() for k, v in state.items()}

    def _read_lora(self, d: Path) -> dict[str, torch.Tensor]:
        """A checkpoint's LoRA tensors (see _lora_state), on the CPU, checked against this
        model: the same names and shapes (a DTensor's shape is the whole tensor's)."""
        if not (d / LORA).exists():
            raise FileNotFoundError(f"{d}: no {LORA} (learner.lora_rank > 0): saved without LoRA")
        tensors = load_file(d / LORA)
        own = {k: tuple(v.shape) for k, v in self.model.state_dict().items() if is_lora_key(k)}
        got = {k: tuple(v.shape) for k, v in tensors.items()}
        if got != own:
            differ = sorted(k for k in own.keys() | got.keys() if own.get(k) != got.get(k))
            raise ValueError(
                f"{d / LORA}: its adapters are not this model's ({len(differ)} tensors differ in name "
                f"or shape, e.g. {differ[0]}): saved with another lora_rank or lora_targets"
            )
        return tensors

    def export(self, averaged: bool = False) -> tuple[bytes, str]:
        tensors, checksum = self.export_tensors(averaged)
        return save_safetensors(tensors), checksum

    def export_tensors(self, averaged: bool = False) -> tuple[dict[str, torch.Tensor], str]:
        return export_tensors(self.policy_state(averaged), self.engine_dtype)

    def save_model(self, directory: str | Path, averaged: bool = False) -> None:
        """The policy as an HF checkpoint (weights + tokenizer) that vLLM and transformers
        load; with LoRA, the merged weights. In a sharded group every rank gathers the
        weights and rank 0 writes them. `averaged`: the weights' moving average."""
        weights = self.policy_state(averaged)
        if self.rank == 0:
            self._plain().save_pretrained(directory, state_dict=weights, safe_serialization=True)
            self.tokenizer.save_pretrained(directory)
        if self.sharded:
            dist.barrier()

    def save(self, directory: str | Path) -> None:
        d = Path(directory)
        if self.sharded:
            return self._save_sharded(d)
        self.save_model(d / "model")
        torch.save(self.opt.state_dict(), d / "optimizer.pt")
        torch.save(torch.get_rng_state(), d / "torch_rng.pt")
        if self.value_head is not None:
            save_file(self.value_head.state_dict(), d / "value_head.safetensors")
        if self.cfg.lora_rank:  # model/ holds the merged weights; the adapters and what they adapt:
            save_file(self._lora_state(), d / LORA)
        if self.ref is not None:  # the KL anchor or SPIN's previous iterate, not this policy
            save_model(self.ref, str(d / REFERENCE))
        if self.ema is not None:  # the average as trained (resume) and as a model (evaluate, serve)
            save_model(self.ema, str(d / EMA))
            self.save_model(d / AVERAGED, averaged=True)
        self._save_counters(d)

    def _save_counters(self, d: Path) -> None:
        """Step, version and the RAE baselines: learner_state.json, written last."""
        state = {
            "step": self.step,
            "version": self.version,
            "baselines": [[g, r, b] for (g, r), b in self.baselines.items()],
        }
        write_atomic(d / "learner_state.json", json.dumps(state))

    def _trained(self) -> torch.nn.Module:
        """What the optimiser trains, as one module (model and value head), for the
        distributed state-dict helpers."""
        modules = {"model": self.model}
        if self.value_head is not None:
            modules["value_head"] = self.value_head
        return torch.nn.ModuleDict(modules)

    def _save_sharded(self, d: Path) -> None:
        """Every rank gathers the whole state (collectives); rank 0 writes the same files
        as one learner does, the optimiser's state keyed by parameter name (a sharded
        group's checkpoints load into a sharded group of any size)."""
        from torch.distributed.checkpoint.state_dict import StateDictOptions, get_optimizer_state_dict

        self.save_model(d / "model")
        head = None if self.value_head is None else self._gathered(self.value_head.state_dict().items())
        ref = None if self.ref is None else self._gathered(self.ref.state_dict().items())
        ema = None if self.ema is None else self._gathered(self.ema.state_dict().items())
        if self.ema is not None:
            self.save_model(d / AVERAGED, averaged=True)
        lora = self._lora_state() if self.cfg.lora_rank else None
        options = StateDictOptions(full_state_dict=True, cpu_offload=True)
        optimizer = get_optimizer_state_dict(self._trained(), self.opt, options=options)
        if self.rank == 0:
            torch.save(optimizer, d / "optimizer.pt")
            torch.save(torch.get_rng_state(), d / "torch_rng.pt")
            if head is not None:
                save_file({k: v.contiguous().cpu() for k, v in head.items()}, d / "value_head.safetensors")
            if ref is not None:
                save_file({k: v.contiguous().cpu() for k, v in ref.items()}, d / REFERENCE)
            if ema is not None:
                save_file({k: v.contiguous().cpu() for k, v in ema.items()}, d / EMA)
            if lora is not None:
                save_file({k: v.cpu() for k, v in lora.items()}, d / LORA)
            self._save_counters(d)
        dist.barrier()  # written before any rank goes on

    def _load_sharded(self, d: Path) -> None:
        """Every rank reads the whole state (checkpoints are on storage every rank sees)
        and keeps its shards."""
        from torch.distributed.checkpoint.state_dict import (
            StateDictOptions,
            set_model_state_dict,
            set_optimizer_state_dict,
        )

        options = StateDictOptions(full_state_dict=True)
        optimizer = torch.load(d / "optimizer.pt", weights_only=True, map_location=self.device)
        if by_position(optimizer):  # torch raised KeyError('state.0.step') deep inside
            raise ValueError(
                f"{d}: written by a single learner (its optimiser's state by position, not by name); "
                "a group cannot resume it: resume with learner.num_workers 1, as it trained"
            )
        set_optimizer_state_dict(self._trained(), self.opt, optim_state_dict=optimizer, options=options)
        torch.set_rng_state(torch.load(d / "torch_rng.pt", weights_only=True))
        if self.value_head is not None:
            set_model_state_dict(self.value_head, load_file(d / "value_head.safetensors"), options=options)
        if self.cfg.lora_rank:  # the adapters and the weights they adapt (the rest were built from model/)
            lora = StateDictOptions(full_state_dict=True, strict=False)
            set_model_state_dict(self.model, self._read_lora(d), options=lora)
        if self.ref is not None:
            set_model_state_dict(self.ref, load_file(d / REFERENCE), options=options)
        if self.ema is not None and (d / EMA).exists():
            set_model_state_dict(self.ema, load_file(d / EMA), options=options)
        elif self.ema is not None:
            self._restart_average()
        state = json.loads((d / "learner_state.json").read_text())
        self.step, self.version = state["step"], state["version"]
        self.baselines = {(g, r): b for g, r, b in state["baselines"]}

    @torch.no_grad()
    def _restart_average(self) -> None:
        """A checkpoint saved without the weights' average (learner.ema_decay set on
        resume): the average starts again from the resumed weights, all of them (with LoRA
        the frozen ones too: the copy was made from the merged model/ before they were
        restored)."""
        for average, weights in zip(self.ema.parameters(), self.model.parameters(), strict=True):
            average.copy_(weights.detach())

    def load(self, directory: str | Path) -> None:
        """Restore optimiser, RNG, counters, value head, reference and the weights' average;
        the weights come from `directory`/model, which the learner was constructed from."""
        d = Path(directory)
        if self.sharded:
            return self._load_sharded(d)
        # read to the host: load_state_dict moves each moment to its parameter's device (the
        # host, under optimizer_offload) and keeps `step` where torch wants it; read to the
        # GPU, an offloaded optimiser's moments (8 bytes a parameter) first landed there
        self.opt.load_state_dict(torch.load(d / "optimizer.pt", weights_only=True, map_location="cpu"))
        torch.set_rng_state(torch.load(d / "torch_rng.pt", weights_only=True))
        if self.value_head is not None:
            self.value_head.load_state_dict(load_file(d / "value_head.safetensors", device=str(self.device)))
        if self.cfg.lora_rank:
            self.model.load_state_dict(
                {k: v.to(self.device) for k, v in self._read_lora(d).items()}, strict=False
            )
        if self.ref is not None:
            if not (d / REFERENCE).exists():
                raise FileNotFoundError(
                    f"{d}: no {REFERENCE}, the reference (learner.kl_coef > 0, learner.reference or "
                    "learner.anchor_coef > 0): a checkpoint saved before references were kept, or "
                    "without one; resume it with learner.kl_coef=0, learner.reference=false and "
                    "learner.anchor_coef=0"
                )
            load_model(self.ref, str(d / REFERENCE), device=str(self.device))
        if self.ema is not None and (d / EMA).exists():
            load_model(self.ema, str(d / EMA), device=str(self.device))
        elif self.ema is not None:
            self._restart_average()
        if isinstance(self.opt, OffloadedOptimizer):  # the host copies of what was just loaded
            self.opt.sync_from_model()
        state = json.loads((d / "learner_state.json").read_text())
        self.step, self.version = state["step"], state["version"]
        self.baselines = {(g, r): b for g, r, b in state["baselines"]}
