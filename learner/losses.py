"""Policy losses: pure functions, tensors in, tensors out. Shapes: B turns, T response
tokens (padded); `mask` is 1 on real response tokens."""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor, total: float | None = None) -> torch.Tensor:
    """The mean of `x` over the real tokens of `mask`; `total`: the count to divide by
    instead, when `mask` is one micro-batch of a batch holding `total` real tokens (the
    micro-batches' terms then add up to the batch's mean)."""
    return (x * mask).sum() / (mask.sum().clamp(min=1) if total is None else max(total, 1))


def sequence_mean(x: torch.Tensor, mask: torch.Tensor, total: float | None = None) -> torch.Tensor:
    """Each row's mean over its real tokens, then the mean over the rows that have any: the
    original GRPO aggregation (Shao et al., 2024), where every reply weighs the same
    whatever its length (Dr. GRPO, Liu et al. 2025, shows it favours long wrong replies;
    DAPO's token mean, `masked_mean`, weighs every token the same instead). `total`: the
    batch's count of rows with tokens, when `mask` is one micro-batch of it."""
    lengths = mask.sum(1)
    rows = lengths > 0
    per_row = (x * mask).sum(1)[rows] / lengths[rows]
    if total is not None:
        return per_row.sum() / max(total, 1)
    return per_row.mean() if rows.any() else (x * mask).sum()


AGGREGATIONS = {"token_mean": masked_mean, "sequence_mean": sequence_mean}


def ppo_clip_loss(
    logp: torch.Tensor,
    behaviour_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
    aggregation: str = "token_mean",
    totals: tuple[float, float] | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate (Schulman et al., 2017), per token, with the behaviour policy
    that generated the data as the old policy:
        L = -E[min(rho * A, clip(rho, 1 - eps, 1 + eps) * A)],  rho = pi/mu
    With group-relative advantages this is GRPO's loss (without its KL term, which is
    `kl_loss`); `aggregation` averages over tokens: `token_mean` (DAPO, Dr. GRPO) or
    `sequence_mean` (GRPO as published, see `sequence_mean`).
    logp, behaviour_logp, mask: [B, T]; advantages: [B]. Returns (loss, clipped fraction).
    `totals`: (the batch's real tokens, its rows with tokens) when these B rows are one
    micro-batch of it: loss and fraction are then this micro-batch's share of the batch's."""
    mean = AGGREGATIONS[aggregation]
    tokens, rows = totals or (None, None)
    ratio = torch.exp(logp - behaviour_logp)
    adv = advantages[:, None]
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv
    objective = torch.minimum(unclipped, clipped)
    loss = -mean(objective, mask, rows if aggregation == "sequence_mean" else tokens)
    clip_frac = masked_mean((clipped < unclipped).float(), mask, tokens)
    return loss, clip_frac


def nll_loss(
    logp: torch.Tensor, mask: torch.Tensor, total: float | None = None, aggregation: str = "token_mean"
) -> torch.Tensor:
    """Supervised fine-tuning: the mean negative log-likelihood of the target tokens,
        L = -sum_t mask_t log pi(y_t | x, y_<t) / sum_t mask_t
    over every real token of the batch (`token_mean`: long targets weigh by their length, as
    SFT trainers that average per token do), or each target's mean over its tokens, then the
    mean over targets (`sequence_mean`: every target weighs the same). logp, mask: [B, T];
    `total`: the batch's real tokens (token_mean) or targets (sequence_mean) when these rows
    are one micro-batch of it."""
    return -AGGREGATIONS[aggregation](logp, mask, total)


def kl_estimate(logp: torch.Tensor, ref_logp: torch.Tensor, estimator: str) -> torch.Tensor:
    """Per-token estimators of KL(pi || pi_ref) from a token x sampled from pi (Schulman,
    2020, "Approximating KL divergence"), with r = pi_ref(x) / pi(x):
        k1 = -log r               unbiased, can be negative, high variance
        k2 = (log r)^2 / 2        biased, low variance, >= 0
        k3 = (r - 1) - log r      unbiased, low variance, >= 0
    As values (a reward penalty, a metric) all three estimate KL(pi || ref). As losses
    they differ in what their gradient descends, on tokens from pi:
        k1: E[grad log pi] = 0        no KL gradient at all (so k1 belongs in the reward)
        k2: grad KL(pi || ref)        the KL the penalty means (the loss placement's choice)
        k3: grad KL(ref || pi)        the reverse KL: mass-covering, not the penalty's KL
    (`tests/test_losses.py` checks each gradient against the exact KL of a small softmax.)"""
    log_r = ref_logp - logp
    if estimator == "k1":
        return -log_r
    if estimator == "k2":
        return 0.5 * log_r**2
    if estimator == "k3":
        return torch.exp(log_r) - 1 - log_r
    raise ValueError(f"unknown KL estimator {estimator!r}; expected k1, k2 or k3")


def kl_loss(
    logp: torch.Tensor,
    ref_logp: torch.Tensor,
    behaviour_logp: torch.Tensor,
    mask: torch.Tensor,
    estimator: str = "k2",
    total: float | None = None,
) -> torch.Tensor:
    """The KL penalty placed in the loss, on tokens the behaviour policy mu sampled: each
    token's estimate is weighted by the importance ratio pi/mu (no gradient through the
    weight), so the expectation, and with k2 the gradient, is that of KL(pi || ref) under
    pi even when the data is a few versions old. logp, ref_logp, behaviour_logp, mask:
    [B, T]; returns a scalar. `total` as in `masked_mean`."""
    weight = torch.exp(logp.detach() - behaviour_logp)
    return masked_mean(weight * kl_estimate(logp, ref_logp, estimator), mask, total)


def kl_penalty(
    logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor, total: float | None = None
) -> torch.Tensor:
    """k3 estimate of KL(pi || pi_ref), averaged over the real tokens (a value, e.g. the
    logged KL; see kl_estimate for what each estimator's gradient does). Non-negative.
    `total` as in `masked_mean`."""
    return masked_mean(kl_estimate(logp, ref_logp, "k3"), mask, total)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B, T, V], targets [B, T] -> (log pi(target) [B, T], entropy [B, T])."""
    logsm = torch.log_softmax(logits.float(), dim=-1)
    logp = logsm.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logsm.exp() * logsm).sum(-1)
    return logp, entropy


# what a masked-out logit is set to: finite, so that 0 * log 0 in the entropy is 0, not NaN,
# and far enough below any logit that its probability is 0 in float32 and bfloat16
MASKED_LOGIT = -1e9


def restrict_logits(logits: torch.Tensor, positions: torch.Tensor, allowed: torch.Tensor) -> torch.Tensor:
    """Legal-move masking in the learner, as the engine masked the sampler: logits [B, T, V];
    at position `positions[i]` of row i (where its reply's token is predicted) every token
    not in `allowed[i]` (ids [B, A], padded with -1) is set to MASKED_LOGIT, so the softmax
    there is over the allowed tokens alone. A row of -1 only is left whole. Out of place, so
    gradients flow to the allowed logits (and none to the masked ones)."""
    restricted = (allowed >= 0).any(-1)
    if not bool(restricted.any()):
        return logits
    rows = torch.arange(len(logits), device=logits.device)
    vocab = logits.shape[-1]
    # pads (-1) are sent to a spare column dropped after, so they mark no real token (id 0
    # included: where that is a legal move, a pad written on it would unmark it)
    keep = torch.zeros(logits.shape[0], vocab + 1, dtype=torch.bool, device=logits.device)
    keep = keep.scatter_(1, torch.where(allowed >= 0, allowed, vocab), True)[:, :vocab]
    keep[~restricted] = True
    at = logits[rows, positions].masked_fill(~keep, MASKED_LOGIT)
    return logits.index_put((rows, positions), at)


PREFERENCE_LOSSES = ("sigmoid", "ipo", "hinge")


def preference_loss(
    chosen_logp: torch.Tensor,
    rejected_logp: torch.Tensor,
    ref_chosen_logp: torch.Tensor,
    ref_rejected_logp: torch.Tensor,
    beta: float,
    kind: str = "sigmoid",
    chosen_tokens: torch.Tensor | None = None,
    rejected_tokens: torch.Tensor | None = None,
) -> tuple[torch.Tensor, torch.Tensor]:
    """Per-pair losses [P] of direct preference optimisation from each reply's summed
    log-prob under the policy and the reference ([P] each), and the implicit reward margin
    [P]. With h = (log pi(y_w) - log ref(y_w)) - (log pi(y_l) - log ref(y_l)):
        sigmoid  -log sigmoid(beta * h)                     DPO (Rafailov et al., 2023)
        hinge    max(0, 1 - beta * h)                       SLiC (Zhao et al., 2023)
        ipo      (h' - 1 / (2 beta))^2                      IPO (Azar et al., 2023)
    where IPO's h' uses each reply's log-ratio averaged over its tokens (`chosen_tokens`,
    `rejected_tokens`: [P] counts), as TRL does (so beta means the same whatever the
    length). SPIN (Chen et al., 2024) is the sigmoid loss with y_w the supervised target and
    y_l the previous iterate's own sample. Margin: beta * h, the reward the loss separates
    (IPO's: beta * h', as TRL's; beta * h could differ from what IPO pushes even in sign)."""
    chosen_ratio = chosen_logp - ref_chosen_logp
    rejected_ratio = rejected_logp - ref_rejected_logp
    h = chosen_ratio - rejected_ratio
    margin = h
    if kind == "sigmoid":
        loss = -torch.nn.functional.logsigmoid(beta * h)
    elif kind == "hinge":
        loss = torch.relu(1 - beta * h)
    elif kind == "ipo":
        if chosen_tokens is None or rejected_tokens is None:
            raise ValueError("preference_loss ipo: needs each reply's token count")
        margin = chosen_ratio / chosen_tokens.clamp(min=1) - rejected_ratio / rejected_tokens.clamp(min=1)
        loss = (margin - 1 / (2 * beta)) ** 2
    else:
        raise ValueError(f"unknown preference loss {kind!r}; expected one of {', '.join(PREFERENCE_LOSSES)}")
    return loss, (beta * margin).detach()


def bradley_terry_loss(
    chosen: torch.Tensor, rejected: torch.Tensor, margin: torch.Tensor | None = None, center_coef: float = 0.0
) -> torch.Tensor:
    """Per-pair losses [P] of a Bradley-Terry reward model from its scalar rewards of the
    chosen and the rejected reply ([P] each): -log sigmoid(r_w - r_l - margin), the
    negative log-likelihood that the chosen reply wins (InstructGPT, Ouyang et al. 2022;
    `margin` [P] as Llama 2's). `center_coef` adds coef * (r_w + r_l)^2, which keeps the
    rewards near 0 (Eisenstein et al. 2023; TRL's center_rewards_coefficient), since the loss
    sees only differences. The mean over pairs is TRL's RewardTrainer loss."""
    diff = chosen - rejected if margin is None else chosen - rejected - margin
    loss = -torch.nn.functional.logsigmoid(diff)
    if center_coef:
        loss = loss + center_coef * (chosen + rejected) ** 2
    return loss
