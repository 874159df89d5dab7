"""PPO clip loss, k3 KL and token log-probs on tiny tensors, against hand-worked numbers."""

from __future__ import annotations

import itertools
import math

import pytest
import torch

from learner.losses import (
    bradley_terry_loss,
    kl_estimate,
    kl_loss,
    kl_penalty,
    masked_mean,
    nll_loss,
    ppo_clip_loss,
    preference_loss,
    restrict_logits,
    token_logprobs,
)


def logps_with_ratios(ratios: list[list[float]], behaviour: float = -1.0):
    """(logp, behaviour_logp) such that exp(logp - behaviour_logp) == ratios."""
    r = torch.tensor(ratios, dtype=torch.float64)
    beh = torch.full_like(r, behaviour)
    return beh + r.log(), beh


def test_ppo_clip_loss_hand_computed():
    # eps = 0.2, so ratios are clipped to [0.8, 1.2].
    # row 0, A = +2:  rho 1.0 -> min(2.0, 2.0) = 2.0
    #                 rho 1.5 -> min(3.0, 1.2*2 = 2.4) = 2.4   clipped
    #                 rho 0.5 -> min(1.0, 0.8*2 = 1.6) = 1.0
    # row 1, A = -1:  rho 1.1 -> min(-1.1, -1.1) = -1.1
    #                 rho 0.7 -> min(-0.7, 0.8*-1 = -0.8) = -0.8   clipped
    #                 rho 2.0 -> padding (mask 0)
    # masked mean = (2.0 + 2.4 + 1.0 - 1.1 - 0.8) / 5 = 3.5 / 5 = 0.7 -> loss -0.7
    # clip fraction = 2 clipped of 5 real tokens = 0.4
    logp, beh = logps_with_ratios([[1.0, 1.5, 0.5], [1.1, 0.7, 2.0]])
    adv = torch.tensor([2.0, -1.0], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 1.0, 0.0]], dtype=torch.float64)
    loss, clip_frac = ppo_clip_loss(logp, beh, adv, mask, clip_eps=0.2)
    assert loss.item() == pytest.approx(-0.7)
    assert clip_frac.item() == pytest.approx(0.4)


def test_on_policy_loss_is_minus_mean_advantage_and_nothing_is_clipped():
    logp = torch.tensor([[-0.3, -1.2, -2.0], [-0.7, -0.1, -5.0]])
    adv = torch.tensor([0.5, -1.5])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 1.0, 1.0]])
    loss, clip_frac = ppo_clip_loss(logp, logp.clone(), adv, mask, clip_eps=0.2)
    # rho = 1 everywhere; masked mean of A per token: (0.5 * 2 - 1.5 * 3) / 5 = -0.7 -> loss +0.7
    assert loss.item() == pytest.approx(0.7)
    assert clip_frac.item() == 0.0


def grad_of_loss(ratio: float, advantage: float, clip_eps: float = 0.2) -> float:
    logp, beh = logps_with_ratios([[ratio]])
    logp.requires_grad_(True)
    loss, _ = ppo_clip_loss(
        logp,
        beh,
        torch.tensor([advantage], dtype=torch.float64),
        torch.ones(1, 1, dtype=torch.float64),
        clip_eps,
    )
    loss.backward()
    return logp.grad.item()


def test_positive_advantage_above_clip_range_has_no_gradient():
    assert grad_of_loss(ratio=1.5, advantage=2.0) == 0.0


def test_positive_advantage_inside_clip_range_has_gradient():
    # d/dlogp of -(rho * A) = -rho * A = -1.1 * 2 = -2.2
    assert grad_of_loss(ratio=1.1, advantage=2.0) == pytest.approx(-2.2)


def test_negative_advantage_below_clip_range_has_no_gradient():
    assert grad_of_loss(ratio=0.5, advantage=-1.0) == 0.0
    # above the range a negative advantage still pushes down: -rho * A = -1.5 * -1 = 1.5
    assert grad_of_loss(ratio=1.5, advantage=-1.0) == pytest.approx(1.5)


def test_kl_penalty_is_zero_for_equal_policies():
    logp = torch.tensor([[-0.5, -2.0], [-1.0, -0.1]])
    assert kl_penalty(logp, logp.clone(), torch.ones(2, 2)).item() == 0.0


def test_kl_penalty_hand_computed():
    # d = ref - logp = [ln 2, -1, 0 (padding)]
    # exp(d) - d - 1: ln 2 -> 2 - ln 2 - 1 = 0.306853; -1 -> e^-1 + 1 - 1 = 0.367879
    # masked mean over 2 tokens = (0.306853 + 0.367879) / 2 = 0.337366
    logp = torch.tensor([[0.0, 1.0, 0.5]], dtype=torch.float64)
    ref = torch.tensor([[math.log(2), 0.0, 3.0]], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 0.0]], dtype=torch.float64)
    expected = ((1 - math.log(2)) + math.exp(-1)) / 2
    assert kl_penalty(logp, ref, mask).item() == pytest.approx(expected)
    assert expected == pytest.approx(0.337366, abs=1e-6)


def test_kl_penalty_is_non_negative():
    g = torch.Generator().manual_seed(0)
    logp = -torch.rand(8, 16, generator=g) * 5
    ref = -torch.rand(8, 16, generator=g) * 5
    mask = (torch.rand(8, 16, generator=g) > 0.3).float()
    assert kl_penalty(logp, ref, mask).item() > 0
    assert kl_penalty(logp, logp, mask).item() == 0.0  # no divergence, none estimated
    for b, t in itertools.product(range(8), range(16)):  # and every token's own term
        one = torch.zeros_like(mask)
        one[b, t] = 1.0
        assert kl_penalty(logp, ref, one).item() >= 0


def test_masked_mean_of_fully_masked_tensor_is_zero():
    assert masked_mean(torch.ones(2, 3), torch.zeros(2, 3)).item() == 0.0


def test_token_logprobs_hand_computed():
    # logits [0, ln 2, ln 5]: exp sums to 1 + 2 + 5 = 8, so probs are 1/8, 2/8, 5/8.
    row = [0.0, math.log(2), math.log(5)]
    logits = torch.tensor([[row, row]])  # [B=1, T=2, V=3]
    targets = torch.tensor([[1, 2]])
    logp, entropy = token_logprobs(logits, targets)
    assert logp.shape == entropy.shape == (1, 2)
    assert logp[0].tolist() == pytest.approx([math.log(2 / 8), math.log(5 / 8)])
    assert torch.allclose(logp, torch.log_softmax(logits, -1).gather(-1, targets[..., None])[..., 0])
    # H = -(1/8 ln 1/8 + 2/8 ln 2/8 + 5/8 ln 5/8) = 0.259930 + 0.346574 + 0.293752 = 0.900256
    h = -sum(p * math.log(p) for p in (1 / 8, 2 / 8, 5 / 8))
    assert entropy[0].tolist() == pytest.approx([h, h])
    assert h == pytest.approx(0.900256, abs=1e-6)


def test_entropy_of_uniform_logits_is_log_vocab():
    logits = torch.full((2, 3, 7), 0.25)
    logp, entropy = token_logprobs(logits, torch.zeros(2, 3, dtype=torch.long))
    assert torch.allclose(entropy, torch.full((2, 3), math.log(7)))
    assert torch.allclose(logp, torch.full((2, 3), -math.log(7)))


def test_token_logprobs_compute_in_float32_for_bf16_logits():
    logits = torch.zeros(1, 1, 4, dtype=torch.bfloat16)
    logp, entropy = token_logprobs(logits, torch.tensor([[3]]))
    assert logp.dtype == entropy.dtype == torch.float32
    assert entropy.item() == pytest.approx(math.log(4), rel=1e-6)


def test_restrict_logits_renormalises_over_the_allowed_tokens_at_the_reply_position_only():
    # row 0: at position 1, tokens 1 and 3 allowed of logits [0, ln 2, ln 5, ln 6]: their
    # probabilities become 2/8 and 6/8, the entropy -(1/4 ln 1/4 + 3/4 ln 3/4) = 0.562335;
    # position 0 keeps the whole vocabulary. Row 1 (all -1) is left as it is.
    row = [0.0, math.log(2), math.log(5), math.log(6)]
    logits = torch.tensor([[row, row], [row, row]], requires_grad=True)  # [B=2, T=2, V=4]
    masked = restrict_logits(logits, torch.tensor([1, 1]), torch.tensor([[1, 3], [-1, -1]]))
    logp, entropy = token_logprobs(masked, torch.tensor([[3, 3], [3, 3]]))
    whole = math.log(6 / 14)
    assert logp.flatten().tolist() == pytest.approx([whole, math.log(6 / 8), whole, whole])
    assert entropy[0, 1].item() == pytest.approx(-(0.25 * math.log(0.25) + 0.75 * math.log(0.75)), abs=1e-6)
    assert entropy[0, 1].item() == pytest.approx(0.562335, abs=1e-6)
    assert torch.isfinite(entropy).all()
    logp[0, 1].backward()
    # d log p(3) / d logits over {1, 3}: onehot - p = [-1/4, 1/4]; the masked tokens get none
    assert logits.grad[0, 1].tolist() == pytest.approx([0.0, -0.25, 0.0, 0.25], abs=1e-6)
    assert logits.grad[1].abs().sum().item() == 0.0  # row 1's logp was not in the loss
    # padding (-1) inside a restricted row is ignored; an unrestricted batch comes back as it is
    padded = restrict_logits(logits.detach(), torch.tensor([1, 1]), torch.tensor([[1, -1], [-1, -1]]))
    assert torch.softmax(padded[0, 1], -1).tolist() == pytest.approx([0.0, 1.0, 0.0, 0.0])
    # ...token 0 among the legal ones included (a pad once unmarked it): over {0, 2} the
    # probabilities are 1/6 and 5/6; over {0} alone, 1
    zero = restrict_logits(logits.detach(), torch.tensor([1, 1]), torch.tensor([[0, 2, -1], [0, -1, -1]]))
    assert torch.softmax(zero[0, 1], -1).tolist() == pytest.approx([1 / 6, 0.0, 5 / 6, 0.0])
    assert torch.softmax(zero[1, 1], -1).tolist() == pytest.approx([1.0, 0.0, 0.0, 0.0])
    free = logits.detach()
    assert restrict_logits(free, torch.tensor([0, 0]), torch.full((2, 1), -1)) is free


# ---- KL estimators against the exact KL of a small softmax. Over a 5-token vocabulary the
# expectation over x ~ pi is a weighted sum, so "what the estimator's gradient descends" is
# computed exactly, with pi's weights held fixed as sampling holds them.

PI_LOGITS = [0.3, -1.2, 2.0, 0.0, -0.4]
REF_LOGITS = [1.0, 0.5, -0.3, 0.2, -2.0]


def exact_kl_and_grads():
    logits = torch.tensor(PI_LOGITS, dtype=torch.float64, requires_grad=True)
    logp = torch.log_softmax(logits, -1)
    ref = torch.log_softmax(torch.tensor(REF_LOGITS, dtype=torch.float64), -1)
    forward = (logp.exp() * (logp - ref)).sum()  # KL(pi || ref)
    reverse = (ref.exp() * (ref - logp)).sum()  # KL(ref || pi)
    (g_forward,) = torch.autograd.grad(forward, logits, retain_graph=True)
    (g_reverse,) = torch.autograd.grad(reverse, logits)
    return forward.item(), g_forward, g_reverse


def expected_estimate(estimator: str):
    """E_{x~pi}[k(x)] and its gradient with respect to pi's logits."""
    logits = torch.tensor(PI_LOGITS, dtype=torch.float64, requires_grad=True)
    logp = torch.log_softmax(logits, -1)
    ref = torch.log_softmax(torch.tensor(REF_LOGITS, dtype=torch.float64), -1)
    value = (logp.exp().detach() * kl_estimate(logp, ref, estimator)).sum()
    (grad,) = torch.autograd.grad(value, logits)
    return value.item(), grad


def test_k1_and_k3_are_unbiased_estimates_of_kl_pi_ref_and_k2_is_not():
    kl, _, _ = exact_kl_and_grads()
    assert expected_estimate("k1")[0] == pytest.approx(kl, rel=1e-12)
    assert expected_estimate("k3")[0] == pytest.approx(kl, rel=1e-12)
    assert expected_estimate("k2")[0] != pytest.approx(kl, rel=1e-3)


def test_k2_as_a_loss_descends_kl_pi_ref():
    _, g_forward, _ = exact_kl_and_grads()
    assert torch.allclose(expected_estimate("k2")[1], g_forward, atol=1e-12)


def test_k3_as_a_loss_descends_the_reverse_kl_ref_pi():
    _, g_forward, g_reverse = exact_kl_and_grads()
    _, grad = expected_estimate("k3")
    assert torch.allclose(grad, g_reverse, atol=1e-12)
    assert not torch.allclose(grad, g_forward, atol=1e-3)


def test_k1_as_a_loss_has_no_kl_gradient():
    assert torch.allclose(expected_estimate("k1")[1], torch.zeros(5, dtype=torch.float64), atol=1e-12)


def test_the_kl_loss_on_stale_tokens_is_importance_weighted_to_pi():
    """Tokens from an older policy mu: each weighted pi/mu, the loss's expectation and
    gradient are those of KL(pi || ref) under pi (mu's probabilities enter as the mask, so
    masked_mean is the expectation over x ~ mu)."""
    kl, g_forward, _ = exact_kl_and_grads()
    logits = torch.tensor(PI_LOGITS, dtype=torch.float64, requires_grad=True)
    logp = torch.log_softmax(logits, -1)[None]
    ref = torch.log_softmax(torch.tensor(REF_LOGITS, dtype=torch.float64), -1)[None]
    mu = torch.log_softmax(torch.tensor([0.0, 0.0, 1.0, -1.0, 0.5], dtype=torch.float64), -1)[None]
    value = kl_loss(logp, ref, mu, mask=mu.exp(), estimator="k3")
    assert value.item() == pytest.approx(kl, rel=1e-12)
    logp2 = torch.log_softmax(logits, -1)[None]
    (grad,) = torch.autograd.grad(kl_loss(logp2, ref, mu, mask=mu.exp(), estimator="k2"), logits)
    assert torch.allclose(grad, g_forward, atol=1e-12)
    with pytest.raises(ValueError, match="unknown KL estimator 'k4'"):
        kl_estimate(logp, ref, "k4")


def test_sequence_mean_weighs_every_reply_the_same_whatever_its_length():
    logp = torch.zeros(2, 3, dtype=torch.float64)
    adv = torch.tensor([1.0, -1.0], dtype=torch.float64)
    mask = torch.tensor([[1.0, 1.0, 1.0], [1.0, 0.0, 0.0]], dtype=torch.float64)
    # on policy: token mean (1 * 3 - 1 * 1) / 4 = 0.5; reply mean (1 + -1) / 2 = 0
    assert ppo_clip_loss(logp, logp.clone(), adv, mask, 0.2)[0].item() == pytest.approx(-0.5)
    assert ppo_clip_loss(logp, logp.clone(), adv, mask, 0.2, "sequence_mean")[0].item() == pytest.approx(0.0)
    empty = torch.zeros(2, 3, dtype=torch.float64)  # no real token (an all-sft batch): no loss
    assert ppo_clip_loss(logp, logp.clone(), adv, empty, 0.2, "sequence_mean")[0].item() == 0.0


def test_nll_is_the_mean_negative_log_likelihood_of_the_real_tokens():
    logp = torch.tensor([[-1.0, -2.0, -9.0], [-3.0, -9.0, -9.0]])
    mask = torch.tensor([[1.0, 1.0, 0.0], [1.0, 0.0, 0.0]])
    assert nll_loss(logp, mask).item() == pytest.approx(2.0)  # (1 + 2 + 3) / 3
    assert nll_loss(logp, torch.zeros_like(mask)).item() == 0.0
    # per target: ((1 + 2) / 2 + 3 / 1) / 2, every target weighing the same whatever its length
    assert nll_loss(logp, mask, aggregation="sequence_mean").item() == pytest.approx(2.25)
    assert nll_loss(logp[:1], mask[:1], 2, "sequence_mean").item() == pytest.approx(
        0.75
    )  # a micro-batch's share


# ---- preference losses (DPO, IPO, SLiC hinge; SPIN is DPO on its own pairs)


def _pairs(chosen, rejected, ref_chosen, ref_rejected):
    return [torch.tensor([x], dtype=torch.float64, requires_grad=True) for x in (chosen, rejected)] + [
        torch.tensor([x], dtype=torch.float64) for x in (ref_chosen, ref_rejected)
    ]


def test_dpo_sigmoid_loss_margin_and_gradient_hand_computed():
    # h = (-1 - -2) - (-3 - -2) = 2; beta 0.5: -log sigmoid(1) = log(1 + e^-1) = 0.3132617
    chosen, rejected, ref_c, ref_r = _pairs(-1.0, -3.0, -2.0, -2.0)
    loss, margin = preference_loss(chosen, rejected, ref_c, ref_r, beta=0.5)
    assert loss.item() == pytest.approx(0.3132617, abs=1e-6)
    assert margin.item() == pytest.approx(1.0)
    loss.sum().backward()
    # d/d chosen = -beta * sigmoid(-beta h) = -0.5 * 0.2689414; the rejected's is its opposite
    assert chosen.grad.item() == pytest.approx(-0.1344707, abs=1e-6)
    assert rejected.grad.item() == pytest.approx(0.1344707, abs=1e-6)


def test_dpo_at_the_reference_is_log_2_for_any_beta():
    for beta in (0.1, 1.0, 5.0):
        loss, margin = preference_loss(*_pairs(-4.0, -7.0, -4.0, -7.0), beta=beta)
        assert loss.item() == pytest.approx(math.log(2)) and margin.item() == 0.0


def test_hinge_loss_is_zero_past_the_margin_and_linear_before_it():
    # h = 2: beta 0.5 reaches the margin 1 exactly (0); beta 0.1 leaves 1 - 0.2
    assert preference_loss(*_pairs(-1.0, -3.0, -2.0, -2.0), 0.5, "hinge")[0].item() == 0.0
    assert preference_loss(*_pairs(-1.0, -3.0, -2.0, -2.0), 0.1, "hinge")[0].item() == pytest.approx(0.8)
    assert (
        preference_loss(*_pairs(-1.0, -3.0, -2.0, -2.0), 1.0, "hinge")[0].item() == 0.0
    )  # past it: 0, not -1


def test_ipo_loss_averages_each_log_ratio_over_its_tokens():
    def ipo(pairs: list, chosen_tokens: float, rejected_tokens: float):
        return preference_loss(
            *pairs,
            beta=0.5,
            kind="ipo",
            chosen_tokens=torch.tensor([chosen_tokens]),
            rejected_tokens=torch.tensor([rejected_tokens]),
        )

    # chosen log-ratio 1 over 2 tokens, rejected -1 over 4: h' = 0.5 + 0.25 = 0.75;
    # beta 0.5 aims at 1 / (2 beta) = 1: (0.75 - 1)^2 = 0.0625
    loss, margin = ipo(_pairs(-1.0, -3.0, -2.0, -2.0), 2.0, 4.0)
    assert loss.item() == pytest.approx(0.0625)
    # the margin is IPO's too: beta * h' = 0.375 (beta * h, 0.5 * 2 = 1, is not what IPO sees)
    assert margin.item() == pytest.approx(0.375)
    # the summed ratios favour the chosen reply (h = 1 - 0.5 > 0) and the per-token ones the
    # rejected (h' = 1/10 - 0.5/1 < 0): the margin follows IPO's sign
    _, margin = ipo(_pairs(-1.0, -1.5, -2.0, -2.0), 10.0, 1.0)
    assert margin.item() < 0 and margin.item() == pytest.approx(0.5 * (0.1 - 0.5))
    with pytest.raises(ValueError, match="token count"):
        preference_loss(*_pairs(-1.0, -3.0, -2.0, -2.0), beta=0.5, kind="ipo")


def test_an_unknown_preference_loss_is_refused_by_name():
    with pytest.raises(ValueError, match="unknown preference loss 'kto'"):
        preference_loss(*_pairs(-1.0, -3.0, -2.0, -2.0), beta=0.5, kind="kto")


def test_bradley_terry_loss_margin_centering_and_gradient_hand_computed():
    chosen = torch.tensor([1.0, 0.0], requires_grad=True)
    rejected = torch.tensor([-1.0, 0.0], requires_grad=True)
    loss = bradley_terry_loss(chosen, rejected)
    # r_w - r_l = 2: log(1 + e^-2) = 0.1269280; equal rewards: log 2
    assert loss.tolist() == pytest.approx([0.1269280, math.log(2)], abs=1e-6)
    loss.sum().backward()
    # d/d r_w = -sigmoid(-(r_w - r_l)): -0.1192029 and -0.5; the rejected's is the opposite
    assert chosen.grad.tolist() == pytest.approx([-0.1192029, -0.5], abs=1e-6)
    assert rejected.grad.tolist() == pytest.approx([0.1192029, 0.5], abs=1e-6)
    # a margin of 2 asks for more: -log sigmoid(0) = log 2
    assert bradley_terry_loss(chosen, rejected, margin=torch.tensor([2.0, 0.0]))[0].item() == pytest.approx(
        math.log(2)
    )
    # centring: (1 + -1)^2 = 0 leaves pair 0 as it was; pair 1 at (3, 1): log(1 + e^-2) + 0.1 * 16
    centred = bradley_terry_loss(torch.tensor([1.0, 3.0]), torch.tensor([-1.0, 1.0]), center_coef=0.1)
    assert centred.tolist() == pytest.approx([0.1269280, 0.1269280 + 1.6], abs=1e-6)


def test_bradley_terry_loss_sees_only_the_difference_without_centring():
    base = bradley_terry_loss(torch.tensor([0.3]), torch.tensor([-0.4]))
    assert bradley_terry_loss(torch.tensor([10.3]), torch.tensor([9.6])).item() == pytest.approx(base.item())
