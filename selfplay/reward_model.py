"""A Bradley-Terry reward model: a scalar head on the policy's architecture, trained on
(prompt, chosen, rejected) pairs, saved as an HF sequence-classification directory
(`AutoModelForSequenceClassification`, num_labels 1) and served as a judge's principle
(`{name: reward_model, params: {path: DIR}}` in task.principles, selfplay/tasks/judges.py),
so the verifier actors score replies by it as by any rule.

The pairs: two demonstrations of one problem, drawn from the task's own demonstration
distribution (`task.demonstration(problem, rng)`: the describe grammar's mixed-quality
replies), labelled by a rule constitution (`reward_model.labeler`), which stands in for
human raters; ties and identical replies are dropped (`scored_pair`). Train pairs come
from train problems and the held-out pairs from the task's held-out problems, so the
held-out accuracy is that of prompts the model never saw. This is the setting of Gao et
al. (2022), "Scaling laws for reward model overoptimization": a gold judge labels a finite
set, a proxy learns it, and a policy that optimises the proxy can drift from the gold.

A reply is scored at its end: the model reads prompt + reply + eos, and the head's value
at the eos is the reward r (`rewards`); as a principle the score is sigmoid(r) in [0, 1].
Training runs where the learner would (a Ray task with the learner's resources) at the
start of a run that asks for it (`reward_model.pairs > 0`), and writes
RUN_DIR/reward_model/ with `reward_model.json` (the figures) last; a resumed run finds it
complete and goes on."""

from __future__ import annotations

import functools
import json
import math
import random
import shutil
import time
from dataclasses import dataclass
from pathlib import Path

import torch

from learner.losses import bradley_terry_loss
from selfplay.files import write_atomic
from selfplay.tasks.judges import awaits_reward_model, scored_pair

INFO = "reward_model.json"  # written last: the directory is complete


@dataclass(frozen=True)
class Pair:
    prompt: str
    chosen: str
    rejected: str


def demonstration_pairs(task, labeler, problems, seed: int) -> tuple[list[Pair], int]:
    """One labelled pair per problem of `problems`: two demonstrations drawn from a
    Random(seed, problem) stream, the labeler's winner chosen; returns the pairs and how
    many draws were ties (or identical) and dropped."""
    pairs, ties = [], 0
    for problem in problems:
        rng = random.Random(f"{seed}:{problem.id}")
        a, b = task.demonstration(problem, rng), task.demonstration(problem, rng)
        ta = labeler.score(problem.prompt, a, problem.reference).total
        tb = labeler.score(problem.prompt, b, problem.reference).total
        verdict = scored_pair(a, ta, b, tb)
        if verdict == "tie":
            ties += 1
            continue
        chosen, rejected = (a, b) if verdict == "first" else (b, a)
        pairs.append(Pair(problem.prompt, chosen, rejected))
    return pairs, ties


def training_pairs(task, labeler, n: int, held_out: int, seed: int) -> tuple[list[Pair], list[Pair], int]:
    """`n` train pairs from train problems (seeds seed*1_000_003 + i, drawn until n are
    labelled) and up to `held_out` pairs from the task's first held-out problems."""
    train, ties, i = [], 0, 0
    while len(train) < n:
        if i > 4 * n + 100:
            raise ValueError(
                f"reward_model.labeler: {ties} of {i} demonstration pairs were ties; it labels too few"
            )
        batch = [task.problem(seed * 1_000_003 + i + j) for j in range(n - len(train))]
        i += len(batch)
        more, t = demonstration_pairs(task, labeler, batch, seed)
        train += more
        ties += t
    evaluation, t = demonstration_pairs(task, labeler, task.held_out(held_out), seed)
    return train[:n], evaluation, ties + t


class RewardModel:
    """A saved reward model, scoring (prompt, reply) pairs in batches."""

    def __init__(self, path: str | Path, model=None, tokenizer=None):
        from transformers import AutoModelForSequenceClassification, AutoTokenizer

        self.path = str(path)
        self.tokenizer = tokenizer or AutoTokenizer.from_pretrained(self.path)
        self.model = model or AutoModelForSequenceClassification.from_pretrained(self.path)
        if self.model.config.pad_token_id is None:
            raise ValueError(
                f"{self.path}: a reward model needs config.pad_token_id (it reads the last real token)"
            )

    def encode(self, prompt: str, reply: str) -> list[int]:
        return self.tokenizer(prompt + reply).input_ids + [self.tokenizer.eos_token_id]

    def forward(self, sequences: list[list[int]]) -> torch.Tensor:
        """The head's value at each sequence's last token ([N]); right-padded with the pad id,
        which the model skips to find the last real token."""
        pad = self.model.config.pad_token_id
        width = max(map(len, sequences))
        device = self.model.device
        ids = torch.tensor([s + [pad] * (width - len(s)) for s in sequences], device=device)
        mask = torch.tensor([[1] * len(s) + [0] * (width - len(s)) for s in sequences], device=device)
        return self.model(input_ids=ids, attention_mask=mask).logits.squeeze(-1).float()

    @torch.no_grad()
    def rewards(self, prompts: list[str], replies: list[str], batch_size: int = 64) -> list[float]:
        self.model.eval()
        out: list[float] = []
        for i in range(0, len(prompts), batch_size):
            seqs = [
                self.encode(p, r) for p, r in zip(prompts[i : i + batch_size], replies[i : i + batch_size])
            ]
            out += self.forward(seqs).tolist()
        return out

    def accuracy(self, pairs: list[Pair]) -> float:
        """The share of pairs whose chosen reply gets the higher reward."""
        if not pairs:
            return float("nan")
        chosen = self.rewards([p.prompt for p in pairs], [p.chosen for p in pairs])
        rejected = self.rewards([p.prompt for p in pairs], [p.rejected for p in pairs])
        return sum(c > r for c, r in zip(chosen, rejected)) / len(pairs)


@functools.lru_cache(maxsize=4)
def loaded(path: str) -> RewardModel:
    """One RewardModel per path per process (a verifier or generator scores every reply by it)."""
    if not (Path(path) / INFO).exists():
        raise FileNotFoundError(f"reward_model: {path} is not a complete reward model directory (no {INFO})")
    return RewardModel(path)


def probability(prompt: str, reply: str, path: str) -> float:
    """The reward model's score of one reply as a principle: sigmoid(r) in [0, 1]."""
    return 1.0 / (1.0 + math.exp(-loaded(path).rewards([prompt], [reply])[0]))


def train(
    init_path: str,
    out_dir: str,
    train_pairs: list[Pair],
    eval_pairs: list[Pair],
    cfg,
    seed: int,
    threads: int = 1,
    ties_dropped: int = 0,
    device: str = "cpu",
) -> dict:
    """Train a reward model from the weights at `init_path` (its backbone; the scalar head is
    new) on `train_pairs` as `cfg` says (epochs, lr, batch_size, center_coef: a
    RewardModelConfig), and write it to `out_dir` (replaced whole: written aside, then
    renamed). Returns the figures, also in out_dir/reward_model.json."""
    from transformers import AutoModelForSequenceClassification, AutoTokenizer

    torch.set_num_threads(threads)
    torch.manual_seed(seed)
    start = time.time()
    model = AutoModelForSequenceClassification.from_pretrained(init_path, num_labels=1, dtype=torch.float32)
    model.to(device)
    rm = RewardModel(init_path, model=model, tokenizer=AutoTokenizer.from_pretrained(init_path))
    before = rm.accuracy(eval_pairs)
    opt = torch.optim.AdamW(model.parameters(), lr=cfg.lr)
    rng = random.Random(seed)
    order = list(range(len(train_pairs)))
    losses = []
    for _ in range(cfg.epochs):
        model.train()
        rng.shuffle(order)
        for i in range(0, len(order) - cfg.batch_size + 1, cfg.batch_size):
            batch = [train_pairs[j] for j in order[i : i + cfg.batch_size]]
            r = rm.forward(
                [rm.encode(p.prompt, p.chosen) for p in batch]
                + [rm.encode(p.prompt, p.rejected) for p in batch]
            )
            loss = bradley_terry_loss(r[: len(batch)], r[len(batch) :], center_coef=cfg.center_coef).mean()
            opt.zero_grad()
            loss.backward()
            torch.nn.utils.clip_grad_norm_(model.parameters(), 1.0)
            opt.step()
            losses.append(loss.item())
    info = {
        "train_pairs": len(train_pairs),
        "held_out_pairs": len(eval_pairs),
        "ties_dropped": ties_dropped,
        "epochs": cfg.epochs,
        "steps": len(losses),
        "final_loss": sum(losses[-10:]) / max(len(losses[-10:]), 1),
        "held_out_accuracy_before": before,
        "train_accuracy": rm.accuracy(train_pairs[:1000]),
        "held_out_accuracy": rm.accuracy(eval_pairs),
        "seconds": time.time() - start,
        "init": str(init_path),
    }
    out = Path(out_dir)
    aside = out.with_name(out.name + ".partial")
    shutil.rmtree(aside, ignore_errors=True)
    model.save_pretrained(aside, safe_serialization=True)
    rm.tokenizer.save_pretrained(aside)
    write_atomic(aside / INFO, json.dumps(info, indent=2))
    shutil.rmtree(out, ignore_errors=True)
    aside.rename(out)
    return info


def complete(path: str | Path) -> dict | None:
    """A finished reward model directory's figures, or None."""
    info = Path(path) / INFO
    return json.loads(info.read_text()) if info.exists() else None


def train_for_run(
    rm_cfg, task_cfg, init_path: str, out_dir: str, seed: int, threads: int, device: str = "auto"
) -> dict:
    """A run's reward model (config reward_model, selfplay/config.py): its labelled pairs drawn
    from the run's task and trained from `init_path` on the learner's device (`learner.device`:
    auto takes a GPU where torch sees one); the figures."""
    from selfplay.device import pick_device
    from selfplay.tasks import task_of
    from selfplay.tasks.judges import Constitution

    labeler = Constitution.from_config(rm_cfg.labeler, where="reward_model.labeler")
    train_pairs, eval_pairs, ties = training_pairs(
        task_of(task_cfg), labeler, rm_cfg.pairs, rm_cfg.held_out_pairs, seed
    )
    return train(
        init_path, out_dir, train_pairs, eval_pairs, rm_cfg, seed, threads, ties, str(pick_device(device))
    )


def judged_by(principles: list[dict], path: str) -> list[dict]:
    """`principles` with every reward_model principle that names no path judging by `path`."""
    return [
        {**p, "params": {**(p.get("params") or {}), "path": path}} if awaits_reward_model(p) else p
        for p in principles
    ]
