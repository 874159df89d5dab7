"""Evaluations: a policy's results read from played games (outcomes, summarize, the
fields every evaluation reports) and from its probabilities (Kuhn poker's policy table).
Pure: tables and callables in, numbers out."""

from __future__ import annotations

import math
import operator
import string
from collections.abc import Callable

import pyarrow as pa

from selfplay.games import kuhn
from selfplay.games.tictactoe import exact_non_loss, exact_slips
from selfplay.league import BLUNDER, LEARNER, OPENING
from selfplay.stats import mean_interval, points
from selfplay.tasks.judges import pairwise_agreement

# What an evaluation reports, defined once: the rates (report tables), the summary's
# fields (summary.json "before"/"after") and the metrics logged per eval (per seat too).
RATES = ("win", "draw", "loss", "illegal", "non_loss")
SUMMARY_FIELDS = (*RATES, "return", "games")
EVAL_FIELDS = (*SUMMARY_FIELDS, "first_win", "first_non_loss", "second_win", "second_non_loss")
# A task's held-out evaluation (task_summary): greedy accuracy (pass@1), pass@k and the mean
# accuracy of the k samples at the training temperature, well-formed replies, problems
TASK_FIELDS = ("accuracy", "pass_at_k", "sample_accuracy", "valid", "problems")
# a task match (competitive self-play: the policy's greedy reply against a league member's on
# held-out prompts, judged; actors/generator.py:Generator.task_match)
# the reward-hacking monitor's figures over a run (HackingMonitor.summary)
MONITOR_FIELDS = ("alarms", "first_alarm_step", "gold_peak", "gold_final", "gold_retained", "proxy_final")
MATCH_FIELDS = ("score", "win", "draw", "loss", "games", "mean_total", "member_mean_total")
# task.judge self (self-rewarding) adds the policy's own ratings of its held-out replies
# against the rule judge's totals of the same replies (judge_summary)
JUDGE_FIELDS = ("judge_score", "judge_agreement", "judge_decided", "judge_error", "judge_rated")
# the reward-hacking monitor's proxy: the training judge's figure, the first an evaluation has
PROXY_FIELDS = ("judge_score", "score", "accuracy")
# What the monitor reads (task.monitor_replies): the greedy replies' proxy and gold scores, or
# the means over the samples at the training temperature (the policy the reward is paid on)
MONITOR_SERIES = {
    "greedy": (PROXY_FIELDS, "gold_score"),
    "sampled": (("sample_score", "sample_accuracy"), "sample_gold_score"),
}
# A solver + checker evaluation adds (selection_summary): the hidden pass rate of the solution
# its own tests pick (most tests passed), of CodeT's pick (the dual agreement: samples that
# pass the same tests x tests passed) and of a uniform pick, its tests' accuracy and validity,
# and each pick's gain over the uniform one
SELECTION_MEANS = ("selected_pass", "consensus_pass", "random_pass", "test_accuracy", "test_valid")
SELECTION_FIELDS = SELECTION_MEANS + (
    "selection_gain",
    "selection_gain_lo",
    "selection_gain_hi",
    "consensus_gain",
    "consensus_gain_lo",
    "consensus_gain_hi",
)

# generate -> critique -> refine adds (tasks/refine.py:chain_summary): greedy chains' first and
# refined accuracy and the gain (with its interval), the critic's agreement with the checker,
# its share of wrong first answers flagged and of right ones passed, its well-formed verdicts,
# its sums right (with task.params.critic_working), and flips both ways
CHAIN_FIELDS = (
    "first_accuracy",
    "refined_accuracy",
    "refine_gain",
    "refine_gain_lo",
    "refine_gain_hi",
    "critic_agreement",
    "critic_flags_wrong",
    "critic_passes_right",
    "critic_valid",
    "critic_working",
    "flips_to_wrong",
    "flips_to_right",
)


def game_points(outcome: float) -> float:
    """One game's points from its outcome for one side: win 1, draw 1/2, loss 0."""
    return points(outcome > 0, outcome == 0)


def eval_summary(result: dict) -> dict:
    """The summary.json view of one evaluation: SUMMARY_FIELDS of a played evaluation, or
    the whole result of a probability-based one (Kuhn exploitability)."""
    if "exploitability" in result:
        return result
    view = {k: result[k] for k in (task_fields(result) if "accuracy" in result else SUMMARY_FIELDS)}
    if "too_long" in result:  # games left out of the rates: too long for the model's context
        view["too_long"] = result["too_long"]
    return view


def eval_metrics(result: dict, prefix: str = "eval") -> dict[str, float]:
    """Flatten a played evaluation into PREFIX/GAME/OPP/FIELD metric names, with the weight
    version it measured."""
    key = f"{prefix}/{result['game']}/{result['opponent']}"
    fields = task_fields(result) if "accuracy" in result else EVAL_FIELDS
    return {f"{key}/{k}": result[k] for k in (*fields, "version")}


def task_fields(result: dict) -> tuple[str, ...]:
    """The fields of a task evaluation: TASK_FIELDS, and a judged task's score,
    SELECTION_FIELDS and CHAIN_FIELDS where measured."""
    return TASK_FIELDS + tuple(
        f
        for f in (
            "score",
            "sample_score",
            "gold_score",
            "sample_gold_score",
            *SELECTION_FIELDS,
            *JUDGE_FIELDS,
            *CHAIN_FIELDS,
        )
        if f in result
    )


def task_summary(greedy: list, sampled: list, k: int, judged: bool = False) -> dict:
    """A task evaluation from its scores (selfplay.tasks.Score): `greedy` one per problem,
    `sampled` k per problem in problem order. A reply is correct when its total is 1
    (`judged`: a task with no right answer, judged by its principles, adds `score`, the
    greedy replies' mean total, and `sample_score`, the samples'); pass@k: a problem has a correct one among its k samples (with n = k samples, the
    unbiased estimator of Chen et al. 2021 is exactly this)."""
    n = len(greedy)
    correct = [s.total >= 1 for s in sampled]
    per_problem = [any(correct[i * k : (i + 1) * k]) for i in range(n)]
    summary = {
        "accuracy": sum(s.total >= 1 for s in greedy) / max(n, 1),
        "pass_at_k": sum(per_problem) / max(n, 1),
        "sample_accuracy": sum(correct) / max(len(correct), 1),
        "valid": sum(s.valid for s in greedy) / max(n, 1),
        "problems": n,
        "k": k,
    }
    if judged:
        summary["score"] = sum(s.total for s in greedy) / max(n, 1)
        summary["sample_score"] = sum(s.total for s in sampled) / max(len(sampled), 1)
    return summary


def judge_summary(
    ratings: list[float | None], rules: list[float], pairs: list[tuple[int, int]], greedy: list[int]
) -> dict:
    """The policy as judge against the rule judge, on the same replies: `ratings` its own
    (in [0, 1]; None: it gave none that parsed), `rules` the constitution's totals, `pairs`
    the index pairs of replies to one prompt, `greedy` the indices of the greedy replies.
    judge_score: the mean rating of the rated greedy replies (the policy's view of its own
    answers: the self-rewarding proxy); judge_agreement: the share of pairs both order
    strictly (judge_decided of them; 0 when none) that they order alike; judge_error: the mean
    absolute difference of a rated reply's two scores; judge_rated: the share rated."""
    rated = [i for i, r in enumerate(ratings) if r is not None]
    mine = [ratings[i] for i in greedy if ratings[i] is not None]
    both = [(i, j) for i, j in pairs if ratings[i] is not None and ratings[j] is not None]
    agree, decided = pairwise_agreement(ratings, rules, both)
    return {
        "judge_score": sum(mine) / max(len(mine), 1),
        "judge_agreement": agree / decided if decided else 0.0,
        "judge_decided": decided,
        "judge_error": sum(abs(ratings[i] - rules[i]) for i in rated) / max(len(rated), 1),
        "judge_rated": len(rated) / max(len(ratings), 1),
    }


def selection_summary(picks: list[dict[str, float]]) -> dict:
    """Means over problems of SolverChecker.select's figures (SELECTION_MEANS), and the gain
    of each pick by the policy's own tests (most passed; CodeT's dual agreement) over a
    uniform pick, with a 95% interval over problems (the per-problem differences are paired:
    same solutions, same hidden tests)."""
    n = max(len(picks), 1)
    result = {key: sum(p[key] for p in picks) / n for key in SELECTION_MEANS}
    for pick, name in (("selected_pass", "selection_gain"), ("consensus_pass", "consensus_gain")):
        gains = [p[pick] - p["random_pass"] for p in picks]
        result[name] = sum(gains) / n
        if len(gains) >= 2:
            result[f"{name}_lo"], result[f"{name}_hi"] = mean_interval(gains)
    return result


def outcomes(table: pa.Table, policy: str = LEARNER) -> list[dict]:
    """One entry per game `policy` took part in, from its side: game, opponent, role,
    outcome, illegal. A game counts even if `policy` never moved (the opponent opened with
    an illegal move): its seat is read from the opponent's rows. Random opening moves
    (generator.opening_moves) and blunders (generator.blunder_share) are no one's play:
    their rows name neither side."""
    games: dict[str, dict] = {}
    cols = ["traj_id", "game", "role", "policy_id", "opponent_id", "outcome", "illegal"]
    for row in table.select(cols).to_pylist():
        if row["policy_id"] in (OPENING, BLUNDER):
            continue
        if row["policy_id"] == policy:
            role, outcome, illegal, other = row["role"], row["outcome"], row["illegal"], row["opponent_id"]
        elif row["opponent_id"] == policy:  # two-player zero-sum: `policy` got -outcome
            role, outcome, illegal, other = 1 - row["role"], -row["outcome"], False, row["policy_id"]
        else:
            continue
        g = games.setdefault(
            row["traj_id"],
            {"game": row["game"], "opponent": other, "role": role, "outcome": outcome, "illegal": False},
        )
        g["illegal"] |= illegal
    return list(games.values())


def summarize(table: pa.Table, policy: str = LEARNER) -> dict:
    """Win/draw/loss/non-loss/illegal rates and mean return of `policy` against a
    different opponent, overall and per seat, and the counts `wdl` = [wins, draws, losses]
    (what Elo and promotion count)."""
    games = outcomes(table, policy)
    stats: dict = {}
    for label, subset in (
        ("", games),
        ("first_", [g for g in games if g["role"] == 0]),
        ("second_", [g for g in games if g["role"] == 1]),
    ):
        n = max(len(subset), 1)
        stats[f"{label}games"] = len(subset)
        stats[f"{label}win"] = sum(g["outcome"] > 0 for g in subset) / n
        stats[f"{label}draw"] = sum(g["outcome"] == 0 for g in subset) / n
        stats[f"{label}loss"] = sum(g["outcome"] < 0 for g in subset) / n
        stats[f"{label}non_loss"] = sum(g["outcome"] >= 0 for g in subset) / n
        stats[f"{label}illegal"] = sum(g["illegal"] for g in subset) / n
        stats[f"{label}return"] = sum(g["outcome"] for g in subset) / n
    stats["wdl"] = [
        sum(g["outcome"] > 0 for g in games),
        sum(g["outcome"] == 0 for g in games),
        sum(g["outcome"] < 0 for g in games),
    ]
    return stats


# Every one-character reply that Kuhn poker accepts, grouped by the action it means.
KUHN_REPLIES = {a: [c for c in string.printable if kuhn.Kuhn.parse_action(c) == a] for a in (0, 1)}


def kuhn_pairs() -> list[tuple[kuhn.InfoState, int, str]]:
    """(info state, action, reply) for every one-character reply that Kuhn poker accepts,
    at each of its 12 information states."""
    return [(s, a, c) for s in kuhn.INFO_STATES for a, chars in KUHN_REPLIES.items() for c in chars]


def kuhn_policy_table(
    loglikelihood: Callable[[list[str], list[str]], list[float]], temperature: float = 1.0
) -> dict:
    """The policy at Kuhn poker's 12 information states, for OpenSpiel's exploitability.
    `loglikelihood(observations, replies)` gives each reply's log-likelihood after its
    observation at temperature 1 (vLLM's prompt log-probs). P(action) sums the
    one-character replies that parse to it ('p'/'P', 'b'/'B'), each weighted
    exp(log p / T): sampling at `temperature` gives reply c probability proportional to
    exp(logit_c / T) = exp(log p_c / T) times a factor shared by every reply of the state,
    so after renormalising over the legal replies this is the sampled policy, exactly, for
    one-token replies (the demo's setting). The mass on anything else (an illegal reply) is
    reported as illegal_mass at temperature 1 (its value at T needs the whole vocabulary)."""
    pairs = kuhn_pairs()
    logps = loglikelihood([s.observation for s, _, _ in pairs], [c for _, _, c in pairs])
    mass = {s.key: [0.0, 0.0] for s in kuhn.INFO_STATES}  # at T = 1
    tempered = {s.key: [0.0, 0.0] for s in kuhn.INFO_STATES}  # proportional, at T
    for (s, a, _), lp in zip(pairs, logps):
        mass[s.key][a] += math.exp(lp)
        tempered[s.key][a] += math.exp(lp / temperature)
    policy = {}
    for key, (p_pass, p_bet) in tempered.items():
        total = p_pass + p_bet
        policy[key] = [p_pass / total, p_bet / total] if total > 0 else [0.5, 0.5]
    illegal = sum(1 - sum(m) for m in mass.values()) / len(mass)
    return {"policy": policy, "illegal_mass": illegal}


def exact_summary(policy: Callable[[str, int], int], opponent: str) -> dict:
    """TicTacToe non-loss of a deterministic `policy` ((board, player) -> cell) against
    `opponent` (minimax or random) over every game it can play, in each seat and their mean
    (tictactoe.exact_non_loss): what an evaluation of 100 games a seat estimates; and for
    each seat (`X_...`, `O_...`) where it first misses a win or a block, and how often that
    loses (tictactoe.exact_slips)."""
    x, o = (exact_non_loss(policy, seat, opponent) for seat in (0, 1))
    out = {"opponent": opponent, "exact": True, "non_loss": (x + o) / 2, "X": x, "O": o}
    for seat, mark in enumerate("XO"):  # where each seat first misses a win or a block
        out |= {f"{mark}_{k}": v for k, v in exact_slips(policy, seat, opponent).items()}
    return out


def measured(result: dict) -> bool:
    """Whether an evaluation played any game or asked any problem: one of none (every game
    too long for the context) reads its rates as 0."""
    return result.get("games", result.get("problems")) != 0


def acceptance(after: dict, targets: dict[str, str]) -> dict[str, dict]:
    """A demo's acceptance figures, as summary.json carries them: for each target
    'GAME/OPPONENT/FIELD' -> '>= 0.9' (or '<=', '>', '<'), {value, target, met} read from
    the final evaluation (`after`, keyed 'GAME/OPPONENT' or 'kuhn/exploitability').
    A figure the run did not measure has value None and is not met, as has one from an
    evaluation of no games or problems (every game too long for the context: its rates
    read 0, which met a '<=' target)."""
    out = {}
    for name, target in targets.items():
        key, field = name.rsplit("/", 1)
        result = after.get(key, {})
        value = result.get(field) if measured(result) else None
        out[name] = {"value": value, "target": target, "met": meets(value, target)}
    return out


COMPARE = {">=": operator.ge, "<=": operator.le, ">": operator.gt, "<": operator.lt}


def compare(op: str, value: float, bound: float) -> bool:
    """`value` OP `bound` at 9 decimals: figures and bounds are differences and sums of
    counts' shares, whose float error would put a figure landing on its bound below it
    (0.6 - 0.5 = 0.09999999999999998 against >= 0.10; 0.135 + 0.07 = 0.20500000000000002)."""
    return bool(COMPARE[op](round(value, 9), round(bound, 9)))


def meets(value: float | None, target: str) -> bool:
    """Whether `value` meets `target` ('>= 0.9', '<= 0.05', '>' or '<'); a value not
    measured (None) meets nothing."""
    op, bound = target.split()
    return value is not None and compare(op, value, float(bound))


def stop_reached(values: dict[str, list[float]], stop_when: dict[str, str], window: int) -> dict | None:
    """The first of `stop_when` (metric name -> comparison, as Ray Tune's `stop`) that the
    mean of the metric's last `window` values (`values`: name -> values in the order logged)
    meets: {metric, mean, target}; None when none does or has `window` values yet."""
    for name, target in stop_when.items():
        recent = values.get(name, [])[-window:]
        if len(recent) == window and meets(sum(recent) / window, target):
            return {"metric": name, "mean": sum(recent) / window, "target": target}
    return None


def hacking_alarm(proxy: list[float], gold: list[float], window: int, margin: float) -> dict | None:
    """The reward-hacking rule on a run's evaluations so far, oldest first: over the last
    `window` of them (the newest against the one window - 1 before it) the proxy, the judge
    trained against, rose by more than `margin` while the gold judge, never trained against,
    fell by more than `margin`. Returns the two changes, or None (no alarm, or too few)."""
    if len(proxy) != len(gold):
        raise ValueError(f"hacking_alarm: {len(proxy)} proxy scores but {len(gold)} gold scores")
    if len(proxy) < window:
        return None
    rise, fall = proxy[-1] - proxy[-window], gold[-1] - gold[-window]
    if rise > margin and fall < -margin:
        return {"proxy_change": rise, "gold_change": fall}
    return None


def monitor_figures(result: dict, replies: str) -> tuple[float, float]:
    """A judged evaluation's (proxy, gold) figures for `replies` (MONITOR_SERIES): the first
    proxy field it has, and the gold judge's."""
    proxy_fields, gold_field = MONITOR_SERIES[replies]
    return next(result[f] for f in proxy_fields if f in result), result[gold_field]


class HackingMonitor:
    """The proxy and gold scores of a run's evaluations of its current policy, in order;
    `observe` returns an alarm (`hacking_alarm`, with the step) when one is raised. `replies`
    (MONITOR_SERIES) says which of an evaluation's figures it reads: the greedy replies' or
    the samples' means."""

    def __init__(self, window: int, margin: float, replies: str = "greedy"):
        self.window = window
        self.margin = margin
        if replies not in MONITOR_SERIES:
            raise ValueError(f"replies: one of {', '.join(MONITOR_SERIES)}, got {replies!r}")
        self.replies = replies
        self.steps: list[int] = []
        self.proxy: list[float] = []
        self.gold: list[float] = []
        self.alarms: list[dict] = []

    def restore(self, rows: list[dict], task: str, from_step: int, until: int) -> None:
        """Replay a resumed run's evaluations (metrics rows: step, name, value) of steps
        from_step..until, so the window spans the resume; their alarms count again as they did."""
        prefix = f"eval/{task}/held_out/"
        results: dict[int, dict] = {}
        for r in rows:
            if r["name"].startswith(prefix) and from_step <= r["step"] <= until:
                results.setdefault(r["step"], {})[r["name"][len(prefix) :]] = r["value"]
        proxy_fields, gold_field = MONITOR_SERIES[self.replies]
        for step, result in sorted(results.items()):
            if gold_field in result and any(f in result for f in proxy_fields):
                self.observe(step, *self.read(result))

    def read(self, result: dict) -> tuple[float, float]:
        """An evaluation's (proxy, gold) figures, the ones this monitor follows."""
        return monitor_figures(result, self.replies)

    def observe(self, step: int, proxy: float, gold: float) -> dict | None:
        if self.steps and step == self.steps[-1]:
            # the same weights measured again (the final evaluation of a run whose last
            # periodic one fell on its last step): one point, not a second alarm
            return None
        self.steps.append(step)
        self.proxy.append(proxy)
        self.gold.append(gold)
        alarm = hacking_alarm(self.proxy, self.gold, self.window, self.margin)
        if alarm is not None:
            alarm = {"step": step, "since_step": self.steps[-self.window], **alarm}
            self.alarms.append(alarm)
        return alarm

    def summary(self) -> dict:
        """MONITOR_FIELDS: alarms raised (evaluations in alarm), the first's step, the gold
        score's peak and final value, final over peak, and the proxy's final value."""
        if not self.gold:
            return {}
        peak = max(self.gold)
        return {
            "alarms": len(self.alarms),
            "first_alarm_step": self.alarms[0]["step"] if self.alarms else None,
            "gold_peak": peak,
            "gold_final": self.gold[-1],
            "gold_retained": self.gold[-1] / peak if peak > 0 else None,
            "proxy_final": self.proxy[-1],
        }
