"""The builder (scored groups -> training rows, the variance filter), group-relative
advantages and the supervised stage's labelled set, on hand-computed values."""

from __future__ import annotations

import itertools
import math
import random

import pytest

from learner.advantages import group_advantages, max_at_k, max_at_k_weights, passk_advantages
from selfplay import schema
from selfplay.builder import (
    CURRICULUM_MEMORY,
    build,
    curriculum_accepts,
    curriculum_weights,
    group_means,
    sft_examples,
    sft_problems,
    targets_of,
    update_hard_pool,
    update_learnability,
)
from selfplay.config import BuilderConfig
from selfplay.tasks import make_task
from tests.rows import make_row
from tests.rows import make_task_row as sample

# ---- group-relative advantages


def test_grpo_divides_by_the_group_std():
    # rewards 1, 0, 0, 1: mean 0.5, population std 0.5 -> +-1
    assert group_advantages([1, 0, 0, 1], "grpo", eps=0) == [1.0, -1.0, -1.0, 1.0]


def test_drgrpo_only_centres():
    assert group_advantages([1, 0, 0, 0], "drgrpo") == [0.75, -0.25, -0.25, -0.25]


def test_rloo_leaves_each_sample_out_of_its_own_baseline():
    # sample 0: 1 - mean(0, 0, 0) = 1; the others: 0 - mean(1, 0, 0) = -1/3
    assert group_advantages([1, 0, 0, 0], "rloo") == pytest.approx([1.0, -1 / 3, -1 / 3, -1 / 3])
    assert group_advantages([1, 0, 0, 0], "rloo") == pytest.approx(
        [4 / 3 * a for a in group_advantages([1, 0, 0, 0], "drgrpo")]
    )


@pytest.mark.parametrize("method", ["grpo", "drgrpo", "rloo"])
def test_a_group_that_agrees_gets_zero_advantages(method):
    assert group_advantages([1, 1, 1], method) == [0.0, 0.0, 0.0]
    assert group_advantages([0.5], method) == [0.0]


def test_max_at_k_weights_share_out_each_subsets_maximum():
    # one right of 8, k = 4: the right sample is in C(7,3) = 35 of the C(8,4) = 70 subsets, all
    # with maximum 1; a wrong one is in 35, of which C(6,3) = 20 hold no right one: 15/70
    assert max_at_k_weights([1, 0, 0, 0, 0, 0, 0, 0], 4) == pytest.approx([0.5] + [15 / 70] * 7)
    # 0.5, 1, 0 and k = 2: subsets {0.5, 1} max 1, {0.5, 0} max 0.5, {1, 0} max 1, each / 3
    assert max_at_k_weights([0.5, 1.0, 0.0], 2) == pytest.approx([0.5, 2 / 3, 0.5])
    assert max_at_k_weights([0.5, 1.0, 0.0], 1) == pytest.approx([0.5 / 3, 1 / 3, 0.0])
    assert max_at_k_weights([1.0, 0.0], 4) == [1.0, 1.0]  # k cut to the group's 2: one subset
    assert max_at_k_weights([], 4) == []


@pytest.mark.parametrize("seed", range(5))
def test_max_at_k_weights_match_enumerating_every_subset(seed):
    rng = random.Random(seed)
    n = rng.randint(2, 9)
    rewards = [rng.choice([0.0, 0.25, 1.0, rng.random()]) for _ in range(n)]
    for k in range(1, n + 1):
        totals = [0.0] * n
        for subset in itertools.combinations(range(n), k):
            for i in subset:
                totals[i] += max(rewards[j] for j in subset)
        expected = [t / math.comb(n, k) for t in totals]
        assert max_at_k_weights(rewards, k) == pytest.approx(expected)


def test_passk_pays_what_a_sample_adds_to_the_best_of_k():
    # 0.5, 1, 0, k = 2: shares 0.5, 2/3, 0.5; each sample's baseline (2/3) x max@2 of the
    # other two: 1, 0.5 and 1. a = 3 (w - baseline): the 0.5 adds nothing beside the 1
    assert passk_advantages([0.5, 1.0, 0.0], 2) == pytest.approx([-0.5, 1.0, -0.5])
    std = (1 / 6) ** 0.5
    assert group_advantages([0.5, 1.0, 0.0], "passk", eps=0, k=2) == pytest.approx(
        [-0.5 / std, 1.0 / std, -0.5 / std]
    )
    # 6 right of 8, k = 4: every subset of 4 holds a right one: nothing left to teach
    assert group_advantages([1, 1, 0, 1, 1, 0, 1, 1], "passk", k=4) == [0.0] * 8
    # one right of 8, k = 4: its share 0.5 against a baseline of 0 (the others never pass):
    # 8 x 0.5 = 4; a wrong one's share 15/70 against (4/8) x max@4 of {1, six 0s} = (1/2)
    # (20/35): 8 (15/70 - 20/70) = -4/7. Pushed up 4/0.875 = 4.6 times as hard as under
    # grpo: pass@4 gains most from a prompt the policy rarely solves
    one = [1, 0, 0, 0, 0, 0, 0, 0]
    assert passk_advantages(one, 4) == pytest.approx([4.0] + [-4 / 7] * 7)
    std = (7 / 64) ** 0.5
    assert group_advantages(one, "passk", eps=0, k=4) == pytest.approx([4 / std] + [-4 / 7 / std] * 7)
    # k = 1 is rloo (over std)
    rewards = [0.2, 0.9, 0.0, 0.5, 0.5]
    assert passk_advantages(rewards, 1) == pytest.approx(group_advantages(rewards, "rloo"))
    # k is cut to n - 1 (the baseline needs k of the others); a group of one has none
    assert passk_advantages([1.0, 0.0], 4) == pytest.approx(passk_advantages([1.0, 0.0], 1)) == [1.0, -1.0]
    assert passk_advantages([1.0], 4) == [0.0] and passk_advantages([], 4) == []


def test_max_at_k_is_the_mean_maximum_over_every_subset():
    assert max_at_k([0.5, 1.0, 0.0], 2) == pytest.approx((1 + 0.5 + 1) / 3)
    assert max_at_k([0.0, 1.0, 0.0, 0.0], 1) == pytest.approx(0.25)
    assert max_at_k([0.3, 0.7], 2) == pytest.approx(0.7)
    rewards = [0.2, 0.9, 0.0, 0.5, 0.5, 0.25]
    for k in range(1, 7):
        subsets = list(itertools.combinations(rewards, k))
        assert max_at_k(rewards, k) == pytest.approx(sum(map(max, subsets)) / len(subsets))
        assert max_at_k(rewards, k) == pytest.approx(sum(max_at_k_weights(rewards, k)) / k)
    with pytest.raises(ValueError, match="max@3 needs at least 3 samples"):
        max_at_k([1.0, 0.0], 3)


def exact_score_gradient(values: list[float], probs: list[float], n: int, k: int) -> float:
    """E[sum_i a_i d log p(y_i) / d theta] over every outcome of n draws from a categorical
    on `values` with probabilities `probs`, theta the first value's logit (d log p(y) / d theta
    = 1[y is the first value] - p_0), a = passk_advantages."""
    total = 0.0
    for outcome in itertools.product(range(len(values)), repeat=n):
        weight = math.prod(probs[j] for j in outcome)
        a = passk_advantages([values[j] for j in outcome], k)
        total += weight * sum(ai * ((j == 0) - probs[0]) for ai, j in zip(a, outcome))
    return total


def exact_max_at_k(values: list[float], probs: list[float], k: int) -> float:
    """E[max of k draws]: sum over values v of v (F(v)^k - F(v-)^k)."""
    order = sorted(range(len(values)), key=lambda j: values[j])
    below, total = 0.0, 0.0
    for j in order:
        total += values[j] * ((below + probs[j]) ** k - below**k)
        below += probs[j]
    return total


@pytest.mark.parametrize(
    "values, probs, n",
    [([1.0, 0.0], [0.3, 0.7], 5), ([1.0, 0.0], [0.8, 0.2], 4), ([0.0, 0.5, 1.0], [0.2, 0.5, 0.3], 4)],
)
def test_passk_advantages_ascend_n_times_the_gradient_of_max_at_k_without_bias(values, probs, n):
    """Every outcome of n draws enumerated: the expected score-function gradient of the
    advantages equals n d max@k / d theta (theta the first value's logit, by central
    differences of the exact max@k), for every k < n (the old mean-of-shares centring gave
    (n - k)/k of it)."""

    def softmax_probs(theta: float) -> list[float]:
        logits = [math.log(q) for q in probs]
        logits[0] += theta
        z = sum(math.exp(x) for x in logits)
        return [math.exp(x) / z for x in logits]

    h = 1e-5
    for k in range(1, n):
        slope = (
            exact_max_at_k(values, softmax_probs(h), k) - exact_max_at_k(values, softmax_probs(-h), k)
        ) / (2 * h)
        assert exact_score_gradient(values, probs, n, k) == pytest.approx(n * slope, rel=1e-6)


def test_passk_rows_are_built_with_the_configured_k():
    """A group of 5, so k 2 and 4 (the default) differ (a group of n caps k at n - 1)."""
    rewards = [1.0, 0.0, 0.5, 0.0, 0.25]
    table = schema.from_rows([sample("a", r, str(i)) for i, r in enumerate(rewards)])
    admitted, _, _ = build(table, BuilderConfig(rows="rl", group_advantage="passk", pass_k=2))
    rows = {r["traj_id"]: r["advantage"] for r in admitted.to_pylist()}
    got = [rows[f"a-{i}-{r}-0"] for i, r in enumerate(rewards)]
    assert got == pytest.approx(group_advantages(rewards, "passk", k=2))
    for other in (1, 4):
        assert got != pytest.approx(group_advantages(rewards, "passk", k=other))


def solver_checker_table(solver: tuple[float, float], checker: tuple[float, float]):
    """One solver_checker problem's group of each role: two solutions (x+1, x+2; role 0)
    and two tests (t1, t2; role 1) with these rewards."""
    replies = [(0, r, t) for r, t in zip(solver, ("x+1", "x+2"))] + [
        (1, r, t) for r, t in zip(checker, ("t1", "t2"))
    ]
    return schema.from_rows(
        [sample("p", r, t, task="solver_checker", game="solver_checker", role=role) for role, r, t in replies]
    )


def test_a_frozen_roles_groups_build_no_rows_and_are_counted():
    """solver_checker with builder.frozen_roles [solver]: the checker's group is trained on
    its rewards as before; the solver's samples (scored: they judged the tests) make no row."""

    table = solver_checker_table(solver=(1.0, 0.0), checker=(1.0, 0.0))
    both, _, _ = build(table, BuilderConfig(rows="rl", group_advantage="drgrpo"))
    admitted, held, counts = build(
        table, BuilderConfig(rows="rl", group_advantage="drgrpo", frozen_roles=["solver"])
    )
    assert sorted(r["role"] for r in both.to_pylist()) == [0, 0, 1, 1]
    checker = {r["traj_id"]: r["advantage"] for r in both.to_pylist() if r["role"] == 1}
    assert (
        {r["traj_id"]: r["advantage"] for r in admitted.to_pylist()}
        == checker
        == {
            "p-t1-1.0-0": 0.5,
            "p-t2-0.0-0": -0.5,
        }
    )
    assert held.num_rows == 0 and counts["rows_frozen"] == 2 and counts["rows_admitted"] == 2
    assert counts["groups"] == 1  # the frozen role's group is not built


def test_an_anchored_roles_samples_are_admitted_as_anchor_rows_whatever_their_rewards():
    """solver_checker with builder.anchored_roles [solver]: the solver's samples are admitted
    as they are, labelled anchor with no advantage (the learner trains only the KL to its
    reference on them), even where their rewards all agree and the variance filter holds the
    checker's group back; counted rows_anchored, not as a built group."""

    table = solver_checker_table(solver=(1.0, 1.0), checker=(0.0, 0.0))
    cfg = BuilderConfig(rows="rl", group_advantage="drgrpo", anchored_roles=["solver"], variance_filter=True)
    admitted, held, counts = build(table, cfg)
    assert [(r["role"], r["label"], r["advantage"]) for r in admitted.to_pylist()] == [
        (0, "anchor", None),
        (0, "anchor", None),
    ]
    assert [(r["role"], r["label"]) for r in held.to_pylist()] == [(1, "rl"), (1, "rl")]
    assert counts["rows_anchored"] == 2 and counts["groups"] == 1 and counts["groups_held_back"] == 1
    assert counts["rows_admitted"] == 0 and counts["rows_frozen"] == 0
    one, _, counts = build(table, BuilderConfig(rows="rl", anchored_roles=["solver"], anchor_samples=1))
    assert [(r["response_text"], r["label"]) for r in one.to_pylist() if r["role"] == 0] == [
        ("x+1", "anchor")
    ]
    assert counts["rows_anchored"] == 1  # builder.anchor_samples: the group's first n


def test_an_unknown_group_advantage_is_refused():
    with pytest.raises(ValueError, match="unknown group advantage 'ppo'"):
        group_advantages([1, 0], "ppo")


# ---- rows


def test_rl_rows_carry_each_samples_group_advantage():
    table = schema.from_rows([sample("a", 1.0, "3"), sample("a", 0.0, "4"), sample("b", 1.0, "7")])
    admitted, held, counts = build(table, BuilderConfig(rows="rl", group_advantage="drgrpo"))
    rows = {r["traj_id"]: r for r in admitted.to_pylist()}
    assert [rows[k]["advantage"] for k in ("a-3-1.0-0", "a-4-0.0-0", "b-7-1.0-0")] == [0.5, -0.5, 0.0]
    assert {r["label"] for r in rows.values()} == {"rl"}
    assert held.num_rows == 0
    assert counts["groups"] == 2 and counts["samples"] == 3 and counts["accepted"] == 2
    assert counts["groups_all_accepted"] == 1 and counts["groups_none_accepted"] == 0


def test_sft_rows_keep_accepted_samples_once_per_distinct_reply():
    table = schema.from_rows(
        [
            sample("a", 1.0, "42", turn=0),
            sample("a", 1.0, "42", turn=1),
            sample("a", 1.0, "042"),
            sample("a", 0.0, "41"),
        ]
    )
    admitted, _, counts = build(table, BuilderConfig(rows="sft"))
    assert sorted(r["response_text"] for r in admitted.to_pylist()) == ["042", "42"]
    assert {r["label"] for r in admitted.to_pylist()} == {"sft"}
    assert all(r["advantage"] is None for r in admitted.to_pylist())
    assert counts["accepted"] == 3 and counts["rows_admitted"] == 2
    no_dedupe, _, _ = build(table, BuilderConfig(rows="sft", dedupe=False))
    assert no_dedupe.num_rows == 3


def test_a_reward_of_exactly_accept_reward_is_accepted_as_the_table_holds_it():
    # 0.9 is held as the float32 0.899999976: compared with the float64 0.9 it fell short
    table = schema.from_rows([sample("a", 0.9, "42"), sample("a", 0.8, "41")])
    admitted, _, counts = build(table, BuilderConfig(rows="sft", accept_reward=0.9))
    assert [r["response_text"] for r in admitted.to_pylist()] == ["42"] and counts["accepted"] == 1


def test_the_variance_filter_holds_back_groups_that_agree():
    table = schema.from_rows(
        [
            sample("easy", 1.0, "1"),
            sample("easy", 1.0, "2"),
            sample("mixed", 1.0, "3"),
            sample("mixed", 0.0, "4"),
        ]
        + [sample("hard", 0.0, "5"), sample("hard", 0.0, "6")]
    )
    admitted, held, counts = build(table, BuilderConfig(rows="rl", variance_filter=True))
    assert {r["group_id"] for r in admitted.to_pylist()} == {"mixed"}
    assert {r["group_id"] for r in held.to_pylist()} == {"easy", "hard"}
    assert all(r["label"] == "rl" and r["advantage"] == 0.0 for r in held.to_pylist())  # built as admitted
    assert counts["groups_held_back"] == 2 and counts["rows_held_back"] == 4 and counts["rows_admitted"] == 2
    # a threshold above the mixed group's std (0.5) holds it back too
    _, held, _ = build(table, BuilderConfig(rows="rl", variance_filter=True, min_reward_std=0.5))
    assert held.num_rows == 6


def test_game_turns_pass_through_the_builder_untouched():
    game = make_row(traj_id="g", ret=1.0)
    admitted, held, counts = build(schema.from_rows([game]), BuilderConfig(variance_filter=True))
    assert admitted.to_pylist() == [game] and held.num_rows == 0 and counts["groups"] == 0


# ---- the supervised stage's labelled set


def test_the_labelled_set_holds_distinct_train_problems_with_their_targets():
    task = make_task("arithmetic", digits=2, terms=2)

    def encode(text, special):
        return ([1] if special else []) + [ord(c) for c in text]

    table = sft_examples(task, encode, eos_id=2, n=50, seed=3, run_id="r")
    rows = table.to_pylist()
    assert len(rows) == len({r["reference_id"] for r in rows}) == 50
    for r in rows[:5]:
        problem = task.problem(r["seed"])
        assert r["reference_id"] == problem.id and r["response_text"] == problem.target
        assert r["prompt_ids"] == encode(problem.prompt, True)
        assert r["response_ids"] == encode(problem.target, False) + [2]  # the reply ends
        assert r["label"] == "sft" and r["trainable"]
        assert task.score(problem.prompt, r["response_text"], problem.reference).total == 1.0
    held = {p.id for p in task.held_out(200)}
    assert not held & {r["reference_id"] for r in rows}
    assert sft_examples(task, encode, 2, 50, 3, "r").to_pylist()[0]["seed"] == rows[0]["seed"]


def test_a_labelled_set_larger_than_the_problem_space_is_refused():
    task = make_task("arithmetic", digits=1, terms=2)  # 100 problems, ~90 of them train
    with pytest.raises(ValueError, match="sft.examples: arithmetic gave only"):
        sft_examples(task, lambda text, special: [ord(c) for c in text], 2, 500, 0, "r")


# ---- the hard-prompt pool


def test_a_problem_solved_sometimes_but_rarely_joins_the_hard_pool():
    groups = [(1, 0.25), (2, 0.0), (3, 0.75), (4, 0.5)]
    assert update_hard_pool([], groups, below=0.5, size=10) == [1, 4]  # 0 and 0.75 stay out


def test_a_hard_problem_leaves_once_solved_or_out_of_reach_and_moves_up_when_seen_again():
    pool = [1, 2, 3]
    assert update_hard_pool(pool, [(1, 0.9), (2, 0.0), (3, 0.125)], below=0.5, size=10) == [3]
    assert update_hard_pool(pool, [(1, 0.25)], below=0.5, size=10) == [2, 3, 1]


def test_the_hard_pool_keeps_its_newest_seeds():
    assert update_hard_pool([1, 2, 3], [(4, 0.25), (5, 0.25)], below=0.5, size=3) == [3, 4, 5]


def test_group_means_reads_each_groups_problem_and_mean_reward():
    table = schema.from_rows(
        [sample("a", 1.0, "1", seed=7), sample("a", 0.0, "2", seed=7), sample("b", 1.0, "3", seed=9)]
        + [make_row(traj_id="game")]
    )
    assert group_means(table) == [(7, 0.5, 0.5, 2), (9, 1.0, 0.0, 1)]  # (seed, mean, population std, n)
    checker = schema.from_rows([sample("a", 1.0, "1", seed=7), sample("a", 0.0, "t", seed=7, role=1)])
    assert group_means(checker) == [(7, 1.0, 0.0, 1)]  # the hard pool reads the first role (the solver's)


# ---- the learnability curriculum


def test_learnability_is_a_plain_mean_over_a_class_first_groups():
    stats = update_learnability({}, [("a", True), ("a", False), ("b", False), ("a", True), ("a", True)])
    assert stats == {"a": (4, 0.75), "b": (1, 0.0)}
    assert update_learnability(stats, []) == stats and stats["a"] == (4, 0.75)  # not changed in place


def test_learnability_then_gives_each_new_group_a_fixed_share():
    full = {"a": (CURRICULUM_MEMORY, 0.5)}
    n, rate = update_learnability(full, [("a", True)])["a"]
    assert (n, rate) == (CURRICULUM_MEMORY + 1, pytest.approx(0.5 + 0.5 / CURRICULUM_MEMORY))
    n, rate = update_learnability(full, [("a", False), ("a", False)])["a"]
    assert rate == pytest.approx(0.5 * (1 - 1 / CURRICULUM_MEMORY) ** 2)


def test_curriculum_weights_are_learnability_with_a_floor():
    stats = {"easy": (10, 0.0), "frontier": (10, 0.6), "rare": (10, 0.02)}
    assert curriculum_weights(stats, floor=0.05) == {"easy": 0.05, "frontier": 0.6, "rare": 0.05}


def test_a_draw_is_kept_with_its_class_weight_over_the_highest():
    weights = {"frontier": 0.5, "easy": 0.1}
    assert curriculum_accepts(weights, "frontier", 0.999)  # the highest class: always kept
    assert curriculum_accepts(weights, "easy", 0.19) and not curriculum_accepts(weights, "easy", 0.2)
    assert curriculum_accepts(weights, "unseen", 0.999)  # never seen: kept, then measured
    assert curriculum_accepts({}, "any", 0.999)  # nothing measured yet: the task's own draw


# ---- SPIN pairs


def test_spin_pairs_the_target_over_each_distinct_sample_that_differs_from_it():
    target = ([7, 8, 2], "ab")
    rows = [
        sample("g", 0.0, "ax", response_ids=[7, 9, 2]),
        sample("g", 1.0, "ab", response_ids=[7, 8, 2]),  # the target itself: no pair
        sample("g", 0.0, "ax", response_ids=[7, 9, 2]),  # a repeat: one pair per distinct reply
        sample("g", 1.0, "ab", response_ids=[7, 8]),  # the target's text, but it never ended
    ]
    admitted, held, counts = build(
        schema.from_rows(rows), BuilderConfig(rows="spin"), {"arithmetic:g": target}
    )
    pairs = admitted.to_pylist()
    assert [(p["response_ids"], p["rejected_ids"]) for p in pairs] == [
        ([7, 8, 2], [7, 9, 2]),
        ([7, 8, 2], [7, 8]),
    ]
    assert all(p["label"] == "dpo" and p["response_text"] == "ab" for p in pairs)
    assert [p["rejected_text"] for p in pairs] == ["ax", "ab"]
    assert pairs[0]["behaviour_logprobs"] == [0.0] * 3 and pairs[0]["advantage"] is None
    assert held.num_rows == 0 and counts["rows_admitted"] == 2 and counts["accepted"] == 2


def test_spin_without_a_target_for_the_problem_is_refused_by_name():
    with pytest.raises(ValueError, match="no supervised target for problem 'arithmetic:g'"):
        build(schema.from_rows([sample("g", 0.0)]), BuilderConfig(rows="spin"), {})


def test_the_targets_of_a_labelled_set_are_its_replies_by_problem():
    task = make_task("arithmetic")
    table = sft_examples(task, lambda text, special: [ord(c) for c in text], 2, 20, 0, "r")
    targets = targets_of(table)
    assert len(targets) == 20
    for r in table.to_pylist():
        assert targets[r["reference_id"]] == (r["response_ids"], r["response_text"])


def test_sft_problems_are_the_labelled_sets_problems_in_order():
    task = make_task("words", max_value=999)
    problems = sft_problems(task, 30, seed=4)
    table = sft_examples(task, lambda text, special: [ord(c) for c in text], 2, 30, 4, "r")
    assert [s for s, _ in problems] == table["seed"].to_pylist()
    assert [p.id for _, p in problems] == table["reference_id"].to_pylist()
    assert all(task.problem(s) == p for s, p in problems)
