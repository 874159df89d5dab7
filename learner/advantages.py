"""Advantage estimators, on the returns the verifier attaches (`selfplay/rewards.py`),
chosen by `learner.advantage`: SPIRAL's role-conditioned baselines (`rae`, below), a
learned value of each state with GAE (`gae`), or the k samples of one prompt as each
other's baseline (`group`, computed by the buffer's builder: `group_advantages`, at the
end of this module).

SPIRAL (Liu et al., 2025, "SPIRAL: Self-Play on Zero-Sum Games Incentivizes Reasoning"):
    A_{G,p}(tau) = R_p(tau) - b_{G,p}                      (b read first: "to be unbiased")
    b_{G,p} <- alpha * b_{G,p} + (1 - alpha) * R_p        (one EMA per game G and role p)
Separate baselines matter because zero-sum games are not symmetric (X wins more often
than O in TicTacToe), and one shared baseline would bias both roles' gradients.

In a batch the order is the same: advantages use the baselines as they stood before the
batch (so a baseline never depends on the actions it scores), then each baseline takes
one EMA step towards the batch's mean return over *games*: every game counts once per
role, however many of its turns were sampled, so long games do not weigh more."""

from __future__ import annotations

import math
from collections import defaultdict

Key = tuple[str, int]  # (game, role)


def update_baselines(
    baselines: dict[Key, float],
    keys: list[Key],
    returns: list[float],
    alpha: float,
    games: list[str] | None = None,
) -> dict[Key, float]:
    """One EMA step per (game, role) present in the batch, towards the mean return of its
    games; `games[i]` names the game (trajectory) row i belongs to (None: every row is its
    own game). A game's rows count once, at their mean return. A key seen for the first
    time starts at that mean."""
    per_game: dict[Key, dict[object, list[float]]] = defaultdict(lambda: defaultdict(list))
    for i, (k, r) in enumerate(zip(keys, returns)):
        per_game[k][games[i] if games is not None else i].append(r)
    new = dict(baselines)
    for k, by_game in per_game.items():
        means = [sum(rs) / len(rs) for rs in by_game.values()]
        mean = sum(means) / len(means)
        new[k] = alpha * baselines[k] + (1 - alpha) * mean if k in baselines else mean
    return new


def role_conditioned_advantages(
    keys: list[Key], returns: list[float], baselines: dict[Key, float]
) -> list[float]:
    """R - b for each row, with b the baseline of its (game, role) before this batch; a
    key never seen has baseline 0 (SPIRAL's EMA starts at 0)."""
    return [r - baselines.get(k, 0.0) for k, r in zip(keys, returns)]


def gae_advantages(
    groups: list[object],
    turns: list[int],
    returns: list[float],
    values: list[float],
    lam: float,
    gamma: float = 1.0,
) -> tuple[list[float], list[float]]:
    """Generalised advantage estimation (Schulman et al., 2016) over each player's own turns
    in a game, with a learned value V(s) of the state a turn moved from, discounted by
    `gamma` per own turn.

    `groups[i]` names row i's (game, role) trajectory, `turns[i]` orders it, `returns[i]` is
    its return-to-go. In the lambda-return form, for a player's consecutive turns k, k+1:
        G_k = r_k + gamma * ((1 - lam) * V_{k+1} + lam * G_{k+1}),   r_k = ret_k - ret_{k+1}
        A_k = G_k - V_k                   (G_k is also the value target)
    which equals sum_j (gamma lam)^(j-k) delta_j with delta_k = r_k + gamma V_{k+1} - V_k. A
    player's last turn in the batch has G = its return-to-go: the game's end, or (when later
    turns of the game are not in the batch) the undiscounted Monte-Carlo return from there.
    lam 1 gives A = ret - V at gamma 1 (a per-state baseline); lam 0 gives one-step TD.
    gamma < 1 makes a win sooner worth more than the same win later (gamma^n for a win n own
    turns ahead), and a loss later less bad than one now. Returns (advantages, targets)."""
    by_group: dict[object, list[int]] = defaultdict(list)
    for i, g in enumerate(groups):
        by_group[g].append(i)
    adv, target = [0.0] * len(groups), [0.0] * len(groups)
    for rows in by_group.values():
        rows.sort(key=lambda i: turns[i])
        nxt = None
        for i in reversed(rows):
            if nxt is None:
                g = returns[i]
            else:
                g = returns[i] - returns[nxt] + gamma * ((1 - lam) * values[nxt] + lam * target[nxt])
            target[i], adv[i] = g, g - values[i]
            nxt = i
    return adv, target


def population_std(values: list[float]) -> float:
    """sqrt(mean((v - mean(v))^2)): the spread of a group's rewards, as GRPO divides by."""
    mean = sum(values) / len(values)
    return (sum((v - mean) ** 2 for v in values) / len(values)) ** 0.5


def max_at_k_weights(rewards: list[float], k: int) -> list[float]:
    """Each sample's share of the unbiased estimate of max@k (pass@k for 0/1 rewards) from
    n >= k samples of one prompt (PKPO, Walder and Karkhanis, 2025): over the C(n, k) subsets
    of k samples, the mean of the subsets' maxima that contain sample i,
        w_i = sum over subsets S containing i of max(S) / C(n, k).
    Sorting ascending (r_(1) <= ... <= r_(n), ties in any order), the subsets where sample
    (i) is the maximum number C(i-1, k-1), and those whose maximum is a later (j) number
    C(j-2, k-2):  w_(i) = [C(i-1, k-1) r_(i) + sum_{j>i} C(j-2, k-2) r_(j)] / C(n, k).
    sum_i w_i = k x the max@k estimate (`max_at_k`), and sum_i w_i grad log p(y_i) estimates
    grad max@k without bias: each subset's term max(S) sum_{j in S} grad log p(y_j) is the
    score-function gradient of the best of k draws. k = 1 gives r_i / n; k is cut to n for a
    smaller group."""
    n = len(rewards)
    if n == 0:
        return []
    k = min(max(k, 1), n)
    order = sorted(range(n), key=lambda i: rewards[i])
    ranked = [rewards[i] for i in order]
    later = 0.0  # sum over j > i of C(j-2, k-2) r_(j) (1-indexed), built from the top down
    shares = [0.0] * n
    for pos in range(n - 1, -1, -1):  # pos = i - 1
        shares[pos] = (math.comb(pos, k - 1) * ranked[pos] + later) / math.comb(n, k)
        if k >= 2 and pos >= 1:
            later += math.comb(pos - 1, k - 2) * ranked[pos]
    out = [0.0] * n
    for pos, i in enumerate(order):
        out[i] = shares[pos]
    return out


def max_at_k(rewards: list[float], k: int) -> float:
    """The unbiased estimate of max@k (pass@k for 0/1 rewards) from n >= k samples: the mean
    of the maxima of all C(n, k) subsets of k, = sum_i C(i-1, k-1) r_(i) / C(n, k) with the
    rewards sorted ascending (r_(i) is the maximum of C(i-1, k-1) subsets)."""
    n = len(rewards)
    if not 1 <= k <= n:
        raise ValueError(f"max@{k} needs at least {k} samples, got {n}")
    ranked = sorted(rewards)
    return sum(math.comb(i, k - 1) * r for i, r in enumerate(ranked)) / math.comb(n, k)


def passk_advantages(rewards: list[float], k: int) -> list[float]:
    """PKPO's per-sample advantages for max@k with a leave-one-out baseline (Walder and
    Karkhanis, 2025, their "sloo"): a_i = n (w_i - (k/n) max@k(r without i)), w_i from
    `max_at_k_weights`. The baseline is computed without y_i, so it adds nothing to the
    expected gradient: E[sum_i a_i grad log p(y_i)] = n grad max@k exactly (tested by
    enumeration); (k/n) max@k(others) is what w_i averages to (sum_i w_i = k max@k), so it
    takes out what a sample would earn anyway. Centring on mean(w) instead, which holds
    y_i, shrinks that expectation by (n - k)/n (to 0 at k = n). k = 1 is RLOO,
    r_i - mean(r_j, j != i). Needs n > k: k is cut to n - 1 for a smaller group (a group of
    one: 0)."""
    n = len(rewards)
    k = min(max(k, 1), n - 1)
    if k < 1:
        return [0.0] * n
    shares = max_at_k_weights(rewards, k)
    return [n * (w - k / n * max_at_k(rewards[:i] + rewards[i + 1 :], k)) for i, w in enumerate(shares)]


def group_advantages(rewards: list[float], method: str, eps: float = 1e-6, k: int = 1) -> list[float]:
    """Advantages of the n samples of one prompt, each judged against the others:
        grpo  (r_i - mean(r)) / (std(r) + eps)     GRPO (Shao et al., 2024), std over the group
        drgrpo r_i - mean(r)                        Dr. GRPO (Liu et al., 2025): no std division,
                                                    which favours prompts of middling difficulty
        rloo  r_i - mean(r_j, j != i)               RLOO (Ahmadian et al., 2024): leave-one-out,
                                                    = n/(n-1) (r_i - mean(r)), an unbiased baseline
        passk a_i / (std(r) + eps)                 max@k (pass@k) as the objective, not the
                                                    mean reward (`passk_advantages`, PKPO with a
                                                    leave-one-out baseline): a sample is paid
                                                    for what it adds to the best of k, so once
                                                    most of a group is right the rest are no
                                                    longer pushed towards it (at 6 right of 8
                                                    and k = 4 every advantage is 0), meant to
                                                    keep samples diverse for a best-of-n pick;
                                                    scaled by the rewards' std as grpo is: k = 1
                                                    is rloo / std
    (`k`: passk's; the others ignore it.) std is the population standard deviation over the
    group (TRL and verl divide by the sample std, torch.std's: smaller advantages by
    sqrt((n-1)/n), 7% at n = 8, 29% at n = 2). A group whose rewards all agree gets zeros under every method: it
    teaches nothing (see the builder's variance filter)."""
    n = len(rewards)
    if n == 0:
        return []
    if method == "passk":
        std = population_std(rewards)
        return [a / (std + eps) for a in passk_advantages(rewards, k)]
    mean = sum(rewards) / n
    if method == "drgrpo":
        return [r - mean for r in rewards]
    if method == "grpo":
        std = population_std(rewards)
        return [(r - mean) / (std + eps) for r in rewards]
    if method == "rloo":
        if n == 1:
            return [0.0]
        return [r - (mean * n - r) / (n - 1) for r in rewards]
    raise ValueError(f"unknown group advantage {method!r}; expected grpo, drgrpo, rloo or passk")
