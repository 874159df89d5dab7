"""The builder: on the buffer's side, turns scored groups (the k samples of one prompt,
sharing a `group_id`) into training rows, and holds the admission rule. Pure: tables in,
tables and counts out; `actors/buffer.py` calls it on every insert.

Rows (`builder.rows`):
  rl   every sample, with its group-relative advantage (GRPO, Dr. GRPO, RLOO or pass@k:
       learner/advantages.py:group_advantages); the learner trains PPO-clipped policy
       gradient on it against the behaviour log-probs.
  sft  rejection sampling (RFT, Yuan et al. 2023): the samples whose reward reaches
       `accept_reward`, one per distinct reply of a group (`dedupe`), labelled sft; the
       learner trains NLL on them.
  spin preference pairs (SPIN, Chen et al. 2024): for each distinct sample whose tokens
       differ from the problem's supervised target (the "human" reply of the SFT data),
       a row labelled dpo with the target as its reply (chosen) and the sample as
       `rejected_ids`; the learner trains the preference loss against its reference (the
       previous iterate). The targets come from the supervised stage's labelled set.
  compete competitive self-play -> DPO: a group holds the policy's k samples of a prompt
       and the newest league snapshot's k (task.versus snapshot); the policy's i-th sample
       meets the snapshot's i-th, the judge's verdict (the task's pointwise scorer, in both
       orders: `judges.judge_pair`) makes the winner chosen and the loser rejected, in a
       row labelled dpo; ties and identical replies are dropped (counted `pairs_dropped`),
       never labelled. The learner's reference is the snapshot (reset at each promotion).
  best_worst  self-rewarding (Yuan et al. 2024): a group's best-rewarded sample (chosen) over
       its worst (rejected), in one row labelled dpo; a group whose best and worst rewards or
       replies are equal makes none (counted `pairs_dropped`). Where the rows also carry the
       rule judge's total (`rules`, task.judge self), the pairs it orders too are counted
       (`pairs_rules_decided`) and those it orders alike (`pairs_rules_agree`): the judge's
       agreement on the very pairs it trains on.
With `fix_targets` (rl rows of the refine task), every refined answer that is wrong also
makes a row labelled sft: its refiner prompt, and as the reply a right answer that its
problem's chains found (a refined one first, else a first answer; none found, no row).
That is STaR's rationalisation (Zelikman et al. 2022) for the refiner, whose own fixes are
too rare for its reward to teach them; counted `fix_targets`. With `fix_flagged_only`, only
the wrong refined answers whose critique said "no" do (a malformed critique is not a "no";
rows scored without the part are not): after "ok" the refiner is taught by its reward
alone, meant to keep the answer there, since taught to answer again everywhere it broke
right answers the critic had passed.
Admission (`variance_filter`, as verl's filter_groups and DAPO's dynamic sampling): a
group whose rewards all agree (std <= min_reward_std) teaches nothing under a group
baseline, so it is held back rather than admitted. Held-back groups are returned apart
(the buffer keeps them as a reserve to fill a batch that cannot fill: never a stall).
Game turns (no task) pass through untouched. The samples of `frozen_roles` build no rows;
those of `anchored_roles` are admitted as they are (the first `anchor_samples` of each group,
where set), labelled anchor: the learner trains only the KL to its reference on them
(learner.anchor_coef), whatever their rewards.

The hard-prompt pool (`update_hard_pool`, prime-rl's and DAPO's curriculum idea): the
generator draws `task.hard_fraction` of its prompts again from the problems its policy
solved sometimes but rarely, so groups that teach come back while they still teach.
The learnability curriculum (`update_learnability`, `curriculum_weights`,
`curriculum_accepts`; task.curriculum): the generator draws new problems by difficulty
class in proportion to the share of the class's recent groups whose rewards differed, so
fewer uniform groups are generated for the filter to hold back."""

from __future__ import annotations

import random
import time
from collections import defaultdict

import pyarrow as pa
import pyarrow.compute as pc

from learner.advantages import group_advantages, population_std
from selfplay import schema
from selfplay.config import BuilderConfig
from selfplay.tasks.base import labelled, role_names
from selfplay.tasks.judges import RULES, degrade, rating_prompt, rubric_marks, scored_pair
from selfplay.tasks.refine import ANSWER, REFINER

PAIR_ROWS = ("spin", "compete", "best_worst")  # builder.rows that make preference pairs
COUNTS = (
    "groups",  # task groups built
    "samples",  # their samples
    "accepted",  # samples whose reward reached accept_reward (correct)
    "groups_all_accepted",  # every sample accepted: too easy to teach
    "groups_none_accepted",  # none accepted: too hard for now
    "groups_held_back",  # the variance filter held back
    "rows_held_back",
    "rows_admitted",  # training rows built from admitted groups
    "pairs_dropped",  # compete, best_worst: pairs the judge tied (or identical replies): never labelled
    "pairs_rules_decided",  # best_worst: pairs the rule judge orders too (task.judge self)
    "pairs_rules_agree",  # of them, those it orders as the training judge does
    "fix_targets",  # refine: wrong refined answers given a right one as an sft row
    "rows_frozen",  # samples of builder.frozen_roles: scored, never trained
    "rows_anchored",  # samples of builder.anchored_roles: admitted as anchor rows (KL alone)
)


def build(
    table: pa.Table, cfg: BuilderConfig, targets: dict[str, tuple[list[int], str]] | None = None
) -> tuple[pa.Table, pa.Table, dict[str, int]]:
    """(admitted rows, held-back rows, counts) of a table of scored turns. Task rows are
    grouped by `group_id` and role; a group must arrive whole (a generator's wave holds every
    sample of its prompts). A task with several roles (solver_checker) has a group per
    role of each problem: each role is judged against its own samples. Held-back rows are
    built as admitted ones would be (label, advantage), so a reserve can admit them as they
    are. `targets` (spin rows): reference id -> (token ids, text) of its supervised target."""
    counts = dict.fromkeys(COUNTS, 0)
    is_task = pc.is_valid(table["task"])
    games = table.filter(pc.invert(is_task))
    groups: dict[tuple[str, int], list[dict]] = defaultdict(list)
    for row in table.filter(is_task).to_pylist():
        groups[(row["group_id"], row["role"])].append(row)
    admitted, held = [], []
    # rewards are held as float32 (the schema): so is the threshold, or a reward of exactly
    # accept_reward 0.9 (0.899999976 held) would fall short of it
    accept = pa.scalar(cfg.accept_reward, pa.float32()).as_py()
    for (_, role), rows in groups.items():
        name = role_name(rows[0]["task"], role) if cfg.frozen_roles or cfg.anchored_roles else None
        if name in cfg.frozen_roles:
            counts["rows_frozen"] += len(rows)
            continue
        if name in cfg.anchored_roles:  # no reward decides them: never held back
            kept = rows[: cfg.anchor_samples or None]
            counts["rows_anchored"] += len(kept)
            admitted.extend({**r, "label": "anchor", "advantage": None} for r in kept)
            continue
        rewards = [r["reward"] for r in rows]
        accepted = [r["reward"] >= accept for r in rows]
        counts["groups"] += 1
        counts["samples"] += len(rows)
        counts["accepted"] += sum(accepted)
        counts["groups_all_accepted"] += all(accepted)
        counts["groups_none_accepted"] += not any(accepted)
        built = group_rows(rows, rewards, accepted, cfg, targets)
        if cfg.rows == "compete":
            counts["pairs_dropped"] += sum(r["trainable"] for r in rows) - len(built)
        if cfg.rows == "best_worst":
            found = best_worst(rows)
            counts["pairs_dropped"] += found is None
            decided, agree = rules_agreement(*found) if found else (0, 0)
            counts["pairs_rules_decided"] += decided
            counts["pairs_rules_agree"] += agree
        if cfg.variance_filter and population_std(rewards) <= cfg.min_reward_std:
            counts["groups_held_back"] += 1
            counts["rows_held_back"] += len(built)
            held.extend(built)
        else:
            counts["rows_admitted"] += len(built)
            admitted.extend(built)
    if cfg.fix_targets:
        fixes = [
            f
            for f in fix_rows(groups, cfg.fix_flagged_only)
            if role_name(f["task"], f["role"]) not in (*cfg.frozen_roles, *cfg.anchored_roles)
        ]
        counts["fix_targets"] += len(fixes)
        admitted.extend(fixes)
    admitted_table = pa.concat_tables([games, schema.from_rows(admitted)]) if admitted else games
    return admitted_table, schema.from_rows(held), counts


def role_name(task: str, role: int) -> str:
    """Role `role`'s name in the task named `task` (selfplay/tasks/base.py:role_names)."""
    from selfplay.tasks import TASKS

    return role_names(TASKS[task], task)[role]


def group_rows(
    rows: list[dict],
    rewards: list[float],
    accepted: list[bool],
    cfg: BuilderConfig,
    targets: dict[str, tuple[list[int], str]] | None = None,
) -> list[dict]:
    """The training rows of one group (see the module)."""
    if cfg.rows == "spin":
        return spin_pairs(rows, targets)
    if cfg.rows == "compete":
        return compete_pairs(rows)
    if cfg.rows == "best_worst":
        return best_worst_pair(rows)
    if cfg.rows == "rl":
        advantages = group_advantages(rewards, cfg.group_advantage, k=cfg.pass_k)
        return [{**r, "label": "rl", "advantage": a} for r, a in zip(rows, advantages)]
    out, seen = [], set()
    for r, ok in zip(rows, accepted):
        if not ok or (cfg.dedupe and r["response_text"] in seen):
            continue
        seen.add(r["response_text"])
        out.append({**r, "label": "sft", "advantage": None})
    return out


def fix_rows(groups: dict[tuple[str, int], list[dict]], flagged_only: bool = False) -> list[dict]:
    """`fix_targets`' rows (see the module) of refine chains grouped by (group, role): for
    each refiner row whose answer is wrong (and, with `flagged_only`, whose critique said
    "no"), one labelled sft row with its prompt and the first right refined answer of its
    problem's chains, else the first right first answer (replies as sampled, eos included: a
    refined answer is written as a first one is)."""
    out = []
    for (group, role), rows in groups.items():
        if role != REFINER:
            continue
        scores = [dict(r["scores"] or ()) for r in rows]
        correct = [s.get("correct") == 1.0 for s in scores]
        right = [r for r, ok in zip(rows, correct) if ok]
        right += [r for r in groups.get((group, ANSWER), []) if r["reward"] >= 1.0]
        if not right:
            continue
        reply = (list(right[0]["response_ids"]), right[0]["response_text"])
        taught = [not ok and (not flagged_only or s.get("flagged") == 1.0) for s, ok in zip(scores, correct)]
        out += [relabelled(r, "sft", reply) for r, fix in zip(rows, taught) if fix]
    return out


def spin_pairs(rows: list[dict], targets: dict[str, tuple[list[int], str]] | None) -> list[dict]:
    """SPIN's pairs of one group: its problem's target (chosen) over each distinct sample
    whose tokens differ from it (rejected). A sample equal to the target teaches nothing
    (the pair's loss has no gradient) and is left out."""
    reference = rows[0]["reference_id"]
    if not targets or reference not in targets:
        raise ValueError(f"builder.rows spin: no supervised target for problem {reference!r}")
    chosen_ids, chosen_text = targets[reference]
    out, seen = [], {tuple(chosen_ids)}
    for r in rows:
        key = tuple(r["response_ids"])
        if key in seen:
            continue
        seen.add(key)
        out.append(pair_row(r, (list(chosen_ids), chosen_text), (r["response_ids"], r["response_text"])))
    return out


def compete_pairs(rows: list[dict]) -> list[dict]:
    """Competitive self-play's pairs of one group: the policy's i-th sample (trainable)
    against the snapshot's i-th, scored by the verifier; the winner by the judge in both
    orders is chosen, the loser rejected, in a row built on the policy's sample (its
    version, for staleness). Ties and identical replies make no row."""
    ours = [r for r in rows if r["trainable"]]
    theirs = [r for r in rows if not r["trainable"]]
    if len(ours) != len(theirs):
        raise ValueError(
            f"builder.rows compete: group {rows[0]['group_id']} holds {len(ours)} policy samples "
            f"and {len(theirs)} snapshot samples; set task.versus snapshot"
        )
    out = []
    for mine, other in zip(ours, theirs):
        verdict = scored_pair(mine["response_text"], mine["reward"], other["response_text"], other["reward"])
        if verdict == "tie":
            continue
        chosen, rejected = (mine, other) if verdict == "first" else (other, mine)
        row = pair_row(
            mine,
            (chosen["response_ids"], chosen["response_text"]),
            (rejected["response_ids"], rejected["response_text"]),
        )
        out.append({**row, "scores": chosen["scores"], "reward": chosen["reward"]})
    return out


def best_worst(rows: list[dict]) -> tuple[dict, dict] | None:
    """A group's best-rewarded trainable sample and its worst, the first of each in the
    group's order on equal rewards; None when their rewards or replies are equal."""
    ours = [r for r in rows if r["trainable"]]
    if len(ours) < 2:
        return None
    best = max(ours, key=lambda r: r["reward"])
    worst = min(ours, key=lambda r: r["reward"])
    if best["reward"] <= worst["reward"] or best["response_text"] == worst["response_text"]:
        return None
    return best, worst


def best_worst_pair(rows: list[dict]) -> list[dict]:
    """Self-rewarding's pair of one group: `best_worst`'s best (chosen) over its worst
    (rejected), in a row built on the chosen sample; none when they are equal."""
    found = best_worst(rows)
    if found is None:
        return []
    best, worst = found
    return [
        pair_row(
            best,
            (best["response_ids"], best["response_text"]),
            (worst["response_ids"], worst["response_text"]),
        )
    ]


def rules_agreement(chosen: dict, rejected: dict) -> tuple[int, int]:
    """(decided, agree) of a chosen and a rejected row by the rule judge's totals (`rules`
    in their scores): (1, 1) when it prefers the chosen reply too, (1, 0) the rejected one,
    (0, 0) on a tie or where no rule total is kept."""
    a, b = dict(chosen["scores"] or ()), dict(rejected["scores"] or ())  # a map column: pairs
    if RULES not in a or RULES not in b or a[RULES] == b[RULES]:
        return 0, 0
    return 1, int(a[RULES] > b[RULES])


def relabelled(base: dict, label: str, reply: tuple[list[int], str]) -> dict:
    """The sampled row `base` (its prompt, group and version) labelled `label` with `reply`
    (ids, text) as its reply and no advantage. Behaviour log-probs are zeros: neither the
    NLL nor the preference loss reads them."""
    return {
        **base,
        "label": label,
        "advantage": None,
        "response_ids": reply[0],
        "response_text": reply[1],
        "behaviour_logprobs": [0.0] * len(reply[0]),
    }


def pair_row(base: dict, chosen: tuple[list[int], str], rejected: tuple[list[int], str]) -> dict:
    """A preference pair built on the sampled row `base`: labelled dpo, `chosen` (ids, text)
    as its reply, `rejected` in rejected_ids/_text."""
    return {**relabelled(base, "dpo", chosen), "rejected_ids": rejected[0], "rejected_text": rejected[1]}


def targets_of(table: pa.Table) -> dict[str, tuple[list[int], str]]:
    """reference id -> (reply ids, text) of a labelled set's first role (the supervised
    targets SPIN pairs samples with)."""
    return {
        r["reference_id"]: (r["response_ids"], r["response_text"])
        for r in table.select(["reference_id", "role", "response_ids", "response_text"]).to_pylist()
        if r["role"] == 0
    }


def sft_problems(task, n: int, seed: int) -> list:
    """The supervised stage's problems: n distinct train problems of `task` drawn from
    `seed`, as (problem seed, Problem); also the prompts of task.prompts sft."""
    rng = random.Random(seed)
    out, seen = [], set()
    for _ in range(50 * n):  # a small problem space runs out: say so rather than loop
        if len(seen) == n:
            break
        problem_seed = rng.getrandbits(31)
        problem = task.problem(problem_seed)
        if problem.id not in seen:
            seen.add(problem.id)
            out.append((problem_seed, problem))
    if len(seen) < n:
        raise ValueError(
            f"sft.examples: {task.name} gave only {len(seen)} distinct train problems, asked {n}"
        )
    return out


def sft_examples(task, encode, eos_id: int, n: int, seed: int, run_id: str) -> pa.Table:
    """The supervised stage's labelled set: the `sft_problems`, each with its SFT target as
    the reply (`encode(text, special)`: token ids, with the tokenizer's special tokens
    (bos) or without; the reply ends with eos), labelled sft; a task with several roles
    gives each problem a row per role (a checker's target drawn from `seed`), a chain task
    the rows its `labelled` makes (tasks.base.labelled). Behaviour
    log-probs are zeros: no policy sampled them, and NLL does not read them."""
    rng = random.Random(seed)
    rows = []
    for problem_seed, problem in sft_problems(task, n, seed):
        for role, prompt, target in labelled(task, problem, rng):
            rows.append(
                labelled_row(
                    task,
                    problem_seed,
                    problem,
                    role,
                    prompt,
                    target,
                    encode,
                    eos_id,
                    run_id,
                    f"sft-{len(rows)}",
                )
            )
    return schema.from_rows(rows)


JUDGE_ROLE = 1  # the judge role's rows in a labelled set (a task's own roles start at 0)


JUDGE_DEGRADED = 0.5  # the share of judge examples whose demonstration is spoilt (judges.degrade)


def judge_examples(task, encode, eos_id: int, n: int, seed: int, run_id: str) -> pa.Table:
    """Rows that teach the judge role (task.judge self; self-rewarding's EFT data): n train
    problems drawn from another seed than the supervised stage's (a few may be the same),
    each with one of the task's demonstrations (`task.demonstration`: of mixed quality),
    JUDGE_DEGRADED of them spoilt as a sampling policy spoils its replies (judges.degrade:
    loops, rambling, misspellings, cuts; the policy's own failures, which the judge must
    see to mark down), in a judge prompt (judges.rating_prompt), and as the reply the
    task's constitution's marks of it (judges.rubric_marks). Role JUDGE_ROLE, so they never
    pass for a problem's target (targets_of)."""
    rng = random.Random(f"judge:{seed}")
    rows = []
    for problem_seed, problem in sft_problems(task, n, seed + 1):
        reply = task.demonstration(problem, rng)
        if rng.random() < JUDGE_DEGRADED:
            reply = degrade(reply, rng, task.max_reply_chars)
        marks = rubric_marks(task.principles, problem.prompt, reply, problem.reference)
        prompt = rating_prompt(problem.prompt, reply)
        rows.append(
            labelled_row(
                task,
                problem_seed,
                problem,
                JUDGE_ROLE,
                prompt,
                marks,
                encode,
                eos_id,
                run_id,
                f"judge-{len(rows)}",
            )
        )
    return schema.from_rows(rows)


def labelled_row(
    task,
    problem_seed: int,
    problem,
    role: int,
    prompt: str,
    reply: str,
    encode,
    eos_id: int,
    run_id: str,
    traj_id: str,
) -> dict:
    """One row of a labelled set: `reply` to `prompt` (ending with eos), labelled sft."""
    ids = encode(reply, False) + [eos_id]
    return {
        "run_id": run_id,
        "traj_id": traj_id,
        "game": task.name,
        "seed": problem_seed,
        "turn": 0,
        "role": role,
        "policy_id": "sft",
        "policy_version": 0,
        "opponent_id": "self",
        "opponent_version": 0,
        "prompt_ids": encode(prompt, True),
        "response_ids": ids,
        "behaviour_logprobs": [0.0] * len(ids),
        "response_text": reply,
        "reward": 1.0,
        "ret": 1.0,
        "outcome": 1.0,
        "illegal": False,
        "trainable": True,
        "generator_id": "sft",
        "gen_time_s": 0.0,
        "created_at": time.time(),
        "task": task.name,
        "group_id": traj_id,
        "reference_id": problem.id,
        "label": "sft",
    }


def group_means(table: pa.Table) -> list[tuple[int, float, float, int]]:
    """(problem seed, mean reward, reward std, samples) of each task group of a scored table,
    in order seen: the first role's rows (a solver's, where a task has a checker too: the pool
    and the curriculum are of problems the solver finds hard)."""
    rewards: dict[str, list[float]] = defaultdict(list)
    seeds: dict[str, int] = {}
    for g, seed, r, role in zip(
        table["group_id"].to_pylist(),
        table["seed"].to_pylist(),
        table["reward"].to_pylist(),
        table["role"].to_pylist(),
    ):
        if g is not None and role == 0:
            rewards[g].append(r)
            seeds[g] = seed
    return [(seeds[g], sum(rs) / len(rs), population_std(rs), len(rs)) for g, rs in rewards.items()]


def update_hard_pool(pool: list[int], groups: list[tuple], below: float, size: int) -> list[int]:
    """The pool of hard problem seeds, oldest first, after these groups' results ((seed,
    mean reward, ...), as `group_means` gives them): a problem whose group was right
    sometimes but at most `below` of the time (0 < mean <= below) joins it (or moves to its
    end); one solved more often (mean > below), or never (mean 0: out of reach for now),
    leaves it. At most `size` seeds, the oldest go first."""
    result = {seed: mean for seed, mean, *_ in groups}
    kept = [s for s in pool if s not in result]
    kept += [s for s, mean in result.items() if 0 < mean <= below]
    return kept[max(len(kept) - size, 0) :]


CURRICULUM_MEMORY = 50  # a class's learnability weighs about its newest 50 groups


def update_learnability(
    stats: dict[str, tuple[int, float]], groups: list[tuple[str, bool]]
) -> dict[str, tuple[int, float]]:
    """Each difficulty class's (groups seen, learnability) after these groups ((class,
    whether its rewards differed)): learnability is the share of the class's groups whose
    rewards differed, the ones a group baseline learns from and the variance filter admits;
    a plain mean over its first CURRICULUM_MEMORY groups, then a moving average that gives
    each new group 1/CURRICULUM_MEMORY of the weight, so it follows the policy as it learns."""
    out = dict(stats)
    for key, informative in groups:
        n, rate = out.get(key, (0, 0.0))
        n += 1
        out[key] = (n, rate + (float(informative) - rate) / min(n, CURRICULUM_MEMORY))
    return out


def curriculum_weights(stats: dict[str, tuple[int, float]], floor: float) -> dict[str, float]:
    """The weight a new problem of each class seen is drawn with (task.curriculum
    learnability): its learnability, at least `floor`, so a class that taught nothing lately
    is still drawn now and then and its learnability can rise again. A class never seen
    weighs 1, the most any can (`curriculum_accepts`)."""
    return {key: max(rate, floor) for key, (_, rate) in stats.items()}


def curriculum_accepts(weights: dict[str, float], key: str, u: float) -> bool:
    """Rejection sampling by class: a problem the task drew, of class `key`, is kept when
    u (uniform in [0, 1)) is below its class's weight over the highest weight, so kept
    problems follow the task's own distribution times the weights (a class never seen
    weighs 1: it is always kept, and is then measured)."""
    top = max(weights.values(), default=1.0)
    return u * top < weights.get(key, 1.0)
