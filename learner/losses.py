"""Policy losses: pure functions, tensors in, tensors out. Shapes: B turns, T response
tokens (padded); `mask` is 1 on real response tokens."""

from __future__ import annotations

import torch


def masked_mean(x: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    return (x * mask).sum() / mask.sum().clamp(min=1)


def ppo_clip_loss(
    logp: torch.Tensor,
    behaviour_logp: torch.Tensor,
    advantages: torch.Tensor,
    mask: torch.Tensor,
    clip_eps: float,
) -> tuple[torch.Tensor, torch.Tensor]:
    """PPO clipped surrogate (Schulman et al., 2017), per token, with the behaviour policy
    that generated the data as the old policy:
        L = -E[min(rho * A, clip(rho, 1 - eps, 1 + eps) * A)],  rho = pi/mu
    logp, behaviour_logp, mask: [B, T]; advantages: [B]. Returns (loss, clipped fraction)."""
    ratio = torch.exp(logp - behaviour_logp)
    adv = advantages[:, None]
    unclipped = ratio * adv
    clipped = ratio.clamp(1 - clip_eps, 1 + clip_eps) * adv
    loss = -masked_mean(torch.minimum(unclipped, clipped), mask)
    clip_frac = masked_mean((clipped < unclipped).float(), mask)
    return loss, clip_frac


def kl_penalty(logp: torch.Tensor, ref_logp: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
    """k3 estimator of KL(pi || pi_ref) on tokens sampled from pi (Schulman, 2020,
    "Approximating KL divergence"): E[exp(d) - d - 1], d = log pi_ref - log pi. Non-negative."""
    d = ref_logp - logp
    return masked_mean(torch.exp(d) - d - 1, mask)


def token_logprobs(logits: torch.Tensor, targets: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """logits [B, T, V], targets [B, T] -> (log pi(target) [B, T], entropy [B, T])."""
    logsm = torch.log_softmax(logits.float(), dim=-1)
    logp = logsm.gather(-1, targets.unsqueeze(-1)).squeeze(-1)
    entropy = -(logsm.exp() * logsm).sum(-1)
    return logp, entropy
