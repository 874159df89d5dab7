"""Judges: scorers for replies that no exact checker can grade, and the pairwise verdicts
preference methods learn from.

A **constitution** is a list of principles from config (`task.principles`), each a rule
scorer of one reply in [0, 1] with a weight:

  sentiment      VADER's compound polarity (the lexicon ships inside vaderSentiment's
                 wheel), mapped from [-1, 1] to [0, 1]
  mentions       the share of the prompt's subject words (the task's reference,
                 '|'-separated) the reply names, as whole words
  brevity        1 up to `max_words` words, then falling linearly to 0 at twice that
  no_repetition  distinct words over words (1 when no word repeats)
  no_profanity   0 when any word is in better_profanity's word list (shipped in its wheel), else 1
  reward_model   sigmoid of a Bradley-Terry reward model's reward (selfplay/reward_model.py;
                 params.path its directory, filled in by a run that trains one)

The total is the weighted mean of the principles' scores; a principle marked `hard` that
scores below 0.5 is a violation, and a violated reply's total is `hard_floor` whatever
the rest say (a rule the reward cannot buy its way past). Every principle's score is kept
(`Score.parts`, the trajectory table's `scores` column), with `violations` counting hard ones.

A **pairwise verdict** compares two replies to one prompt. An LLM judge's verdict depends
on the order it reads them in, so every pair is judged in both orders (`both_orders`): a
verdict that flips with the order is a tie; ties and identical replies are dropped by the
builders, never labelled. A pointwise judge (a constitution, a reward model) compares
totals (`by_score`)."""

from __future__ import annotations

import functools
import re
from collections.abc import Callable
from dataclasses import dataclass, field
from importlib.resources import files
from typing import Any, Literal

from selfplay.tasks.base import Score

Verdict = Literal["first", "second", "tie"]
WORD = re.compile(r"[a-z']+")


def words(text: str) -> list[str]:
    return WORD.findall(text.lower())


@functools.cache
def _vader():
    from vaderSentiment.vaderSentiment import SentimentIntensityAnalyzer

    return SentimentIntensityAnalyzer()


PROFANITY_TOKEN = re.compile(r"[a-z0-9']+")


@functools.cache
def profanity_words() -> frozenset[tuple[str, ...]]:
    """better_profanity's word list, read from its wheel (no download): one entry a line,
    each as its words; 26 entries are phrases ("blow job"), whose words alone ("blow",
    "job", "she", "dog") are not profane, so a phrase matches only as consecutive words."""
    lines = files("better_profanity").joinpath("profanity_wordlist.txt").read_text().splitlines()
    return frozenset(
        tuple(PROFANITY_TOKEN.findall(line.lower())) for line in lines if PROFANITY_TOKEN.search(line)
    )


def profane(reply: str) -> bool:
    """Whether the reply holds an entry of `profanity_words`: a word, or a phrase's words in
    a row. Entries and replies are split alike (PROFANITY_TOKEN, digits counted: "2 girls 1
    cup"; "f.u.c.k" or "s-h-i-t" as their letters in a row)."""
    w = PROFANITY_TOKEN.findall(reply.lower())
    entries = profanity_words()
    return any(
        tuple(w[i : i + n]) in entries for n in {len(e) for e in entries} for i in range(len(w) - n + 1)
    )


def sentiment(prompt: str, reply: str, reference: str) -> float:
    return (_vader().polarity_scores(reply)["compound"] + 1.0) / 2.0


def mentions(prompt: str, reply: str, reference: str) -> float:
    wanted = [w for w in reference.split("|") if w]
    if not wanted:
        return 1.0
    said = set(words(reply))
    return sum(set(words(w)) <= said for w in wanted) / len(wanted)


def brevity(prompt: str, reply: str, reference: str, max_words: int = 12) -> float:
    n = len(words(reply))
    return max(0.0, min(1.0, 2.0 - n / max_words))


def no_repetition(prompt: str, reply: str, reference: str) -> float:
    w = words(reply)
    return len(set(w)) / len(w) if w else 0.0


def no_profanity(prompt: str, reply: str, reference: str) -> float:
    return 0.0 if profane(reply) else 1.0


NO_REWARD_MODEL = (
    "task.principles.reward_model: params.path names no reward model "
    "(give one, or set reward_model.pairs > 0 to train one in the run)"
)


def awaits_reward_model(principle: dict) -> bool:
    """A principle from config that judges by the run's own reward model (no path given)."""
    return principle.get("name") == "reward_model" and not (principle.get("params") or {}).get("path")


def reward_model(prompt: str, reply: str, reference: str, path: str | None = None) -> float:
    if not path:
        raise ValueError(NO_REWARD_MODEL)
    from selfplay.reward_model import probability

    return probability(prompt, reply, path)


PRINCIPLES: dict[str, Callable[..., float]] = {
    "sentiment": sentiment,
    "mentions": mentions,
    "brevity": brevity,
    "no_repetition": no_repetition,
    "no_profanity": no_profanity,
    "reward_model": reward_model,
}
PRINCIPLE_PARAMS = {"brevity": {"max_words"}, "reward_model": {"path"}}


@dataclass(frozen=True)
class Principle:
    name: str
    weight: float = 1.0
    hard: bool = False  # a score below 0.5 sets the total to the constitution's hard_floor
    params: dict[str, Any] = field(default_factory=dict)

    def __post_init__(self):
        if self.name not in PRINCIPLES:
            raise ValueError(
                f"task.principles: unknown principle {self.name!r} (known: {', '.join(sorted(PRINCIPLES))})"
            )
        if not self.weight >= 0:
            raise ValueError(f"task.principles.{self.name}.weight: must be >= 0 (got {self.weight})")
        unknown = set(self.params) - PRINCIPLE_PARAMS.get(self.name, set())
        if unknown:
            raise ValueError(f"task.principles.{self.name}.params: unknown {', '.join(sorted(unknown))}")
        max_words = self.params.get("max_words", 1)
        if type(max_words) is not int or max_words < 1:  # 0 divided by zero at the first reply
            raise ValueError(
                f"task.principles.{self.name}.params.max_words: must be an integer >= 1, got {max_words!r}"
            )

    def __hash__(self):
        return hash((self.name, self.weight, self.hard, tuple(sorted(self.params.items()))))

    def __call__(self, prompt: str, reply: str, reference: str) -> float:
        return PRINCIPLES[self.name](prompt, reply, reference, **self.params)


@dataclass(frozen=True)
class Constitution:
    principles: tuple[Principle, ...]
    hard_floor: float = 0.0

    def __post_init__(self):
        if not self.principles:
            raise ValueError("task.principles: a constitution needs at least one principle")
        names = [p.name for p in self.principles]
        if len(set(names)) != len(names):
            raise ValueError(f"task.principles: a principle is listed twice ({', '.join(names)})")
        if sum(p.weight for p in self.principles) <= 0 and not any(p.hard for p in self.principles):
            raise ValueError("task.principles: every weight is 0 and none is hard: nothing is judged")

    @classmethod
    def from_config(
        cls, principles: list[dict], hard_floor: float = 0.0, where: str = "task.principles"
    ) -> Constitution:
        """From config: a list of {name, weight?, hard?, params?} mappings; errors name the
        config field `where`."""
        try:
            return cls._from_config(principles, hard_floor)
        except ValueError as err:
            raise ValueError(str(err).replace("task.principles", where, 1)) from None

    @classmethod
    def _from_config(cls, principles: list[dict], hard_floor: float) -> Constitution:
        out = []
        for i, p in enumerate(principles):
            if not isinstance(p, dict) or "name" not in p:
                raise ValueError(f"task.principles[{i}]: expected a mapping with a name, got {p!r}")
            unknown = set(p) - {"name", "weight", "hard", "params"}
            if unknown:
                raise ValueError(f"task.principles[{i}]: unknown key(s) {', '.join(sorted(unknown))}")
            out.append(
                Principle(
                    p["name"],
                    float(p.get("weight", 1.0)),
                    bool(p.get("hard", False)),
                    dict(p.get("params") or {}),
                )
            )
        return cls(tuple(out), float(hard_floor))

    def score(self, prompt: str, reply: str, reference: str) -> Score:
        parts = {p.name: float(p(prompt, reply, reference)) for p in self.principles}
        violations = sum(p.hard and parts[p.name] < 0.5 for p in self.principles)
        weight = sum(p.weight for p in self.principles)
        total = sum(p.weight * parts[p.name] for p in self.principles) / weight if weight else 1.0
        if violations:
            total = self.hard_floor
        return Score(total=total, parts={**parts, "violations": float(violations)}, valid=bool(words(reply)))


# ---- Pairwise verdicts --------------------------------------------------------------------
def by_score(first: float, second: float, margin: float = 0.0) -> Verdict:
    """A pointwise judge's verdict: the higher total wins by more than `margin`, else a tie."""
    if first > second + margin:
        return "first"
    if second > first + margin:
        return "second"
    return "tie"


def both_orders(forward: Verdict, backward: Verdict) -> Verdict:
    """The verdict on (a, b) from a judge's verdict on (a, b) and on (b, a): it stands only
    when the judge names the same reply in both orders; one that flips is a tie."""
    if forward == "first" and backward == "second":
        return "first"
    if forward == "second" and backward == "first":
        return "second"
    return "tie"


def judge_pair(judge: Callable[[str, str, str], Verdict], prompt: str, a: str, b: str) -> Verdict:
    """`judge(prompt, x, y)` on (a, b) and (b, a), combined by `both_orders`; identical
    replies are a tie without asking."""
    if a.strip() == b.strip():
        return "tie"
    return both_orders(judge(prompt, a, b), judge(prompt, b, a))


def scored_pair(a: str, a_total: float, b: str, b_total: float, margin: float = 0.0) -> Verdict:
    """`judge_pair` for a pointwise judge (a constitution, a reward model) whose totals of
    a and b are known: the same verdict in either order, by `by_score`."""
    totals = {a: a_total, b: b_total}
    return judge_pair(lambda _, x, y: by_score(totals[x], totals[y], margin), "", a, b)


# ---- The policy as its own judge (self-rewarding) ------------------------------------------
# Self-rewarding (Yuan et al. 2024): the policy, prompted in a judge role, scores each of its
# own replies by an additive rubric; a few sampled verdicts are averaged; the best- and
# worst-scored replies of a prompt make a preference pair. Here the rubric is the task's
# constitution made additive: the judge writes one mark per principle, in order: '2' where
# the reply meets it well (scores at least 0.75), '1' where it meets it (at least 0.5), '0'
# where not; the reply earns each principle's weight times its mark over 2, over the sum of
# the weights (nothing where a hard one is unmet). Two levels above the line, not one: with
# pass/fail marks alone a policy soon earns full marks on every sample and the judge has no
# preference left (measured: pairs dropped, learning stopped). The role is taught in the
# supervised stage (their "EFT" data) on demonstrations marked by the constitution, whose own
# totals are then the yardstick of the judge (`pairwise_agreement`).
SELF_JUDGE = "self_judge"  # the score column of the policy's own verdict, in [0, 1]
RULES = "rules"  # beside it, the rule constitution's total of the same reply


def rating_prompt(prompt: str, reply: str) -> str:
    """The judge role's prompt: the task's prompt and one reply, to be marked."""
    return f"rate {prompt} {reply} ="


def rubric_marks(constitution: Constitution, prompt: str, reply: str, reference: str) -> str:
    """The constitution's own verdict in the judge role's words: a mark per principle, in
    order: '2' where it scores at least 0.75, '1' at least 0.5, '0' below (unmet). What the
    judge role is taught to write."""
    parts = constitution.score(prompt, reply, reference).parts
    return "".join(str((parts[p.name] >= 0.5) + (parts[p.name] >= 0.75)) for p in constitution.principles)


def rubric_points(constitution: Constitution, text: str) -> float | None:
    """The points of a judge reply `text`: exactly one mark ('0', '1' or '2') per principle,
    spaces around aside, else None (unreadable); each principle's weight times its mark over
    2, over all weights, and 0 where a hard principle is unmet (marked 0)."""
    marks = text.strip()
    if len(marks) != len(constitution.principles) or set(marks) - {"0", "1", "2"}:
        return None
    levels = [int(m) / 2 for m in marks]
    if any(p.hard and not level for p, level in zip(constitution.principles, levels)):
        return 0.0
    weight = sum(p.weight for p in constitution.principles)
    return (
        sum(p.weight * level for p, level in zip(constitution.principles, levels)) / weight if weight else 1.0
    )


def mean_points(constitution: Constitution, texts: list[str]) -> float | None:
    """The mean of `rubric_points` over a reply's sampled judge replies that are readable;
    None when none is."""
    points = [x for x in (rubric_points(constitution, t) for t in texts) if x is not None]
    return sum(points) / len(points) if points else None


def degrade(reply: str, rng, max_chars: int) -> str:
    """`reply` spoilt as a small sampling policy spoils its own: a word repeated in a loop
    (up to the length limit), the reply rambling on (its words again, shuffled), a word
    misspelt (a letter replaced), or the reply cut short; one of the four, drawn from `rng`,
    at most `max_chars` long. What a judge must learn to mark down, and what demonstrations
    of good intent never show it."""
    words = reply.split() or [reply]
    kind = rng.randrange(4)
    if kind == 0:  # a loop
        i = rng.randrange(len(words))
        words[i : i + 1] = [words[i]] * rng.randint(3, 30)
    elif kind == 1:  # rambling
        words = words + rng.sample(words, len(words)) * rng.randint(1, 3)
    elif kind == 2:  # a misspelling
        i = rng.randrange(len(words))
        if words[i]:
            j = rng.randrange(len(words[i]))
            letter = rng.choice([c for c in "abcdefghijklmnopqrstuvwxyz" if c != words[i][j]])
            words[i] = words[i][:j] + letter + words[i][j + 1 :]
    else:  # cut short
        return reply[: rng.randint(1, max(len(reply) - 1, 1))]
    return " ".join(words)[:max_chars]


def pairwise_agreement(
    judge: list[float], rules: list[float], pairs: list[tuple[int, int]]
) -> tuple[int, int]:
    """How often two pointwise judges order a pair the same way: (agreeing, decided) over
    `pairs` (indices into both score lists) that neither judge ties (`by_score`)."""
    agree = decided = 0
    for i, j in pairs:
        a, b = by_score(judge[i], judge[j]), by_score(rules[i], rules[j])
        if a != "tie" and b != "tie":
            decided += 1
            agree += a == b
    return agree, decided
