"""Generate -> critique -> refine: one policy in three roles, one multi-turn trajectory per
attempt, on Arithmetic's problems (the exact checker is the verifier the critic is held to).

  turn 0, answer   prompt "12+34="            reply "47"   (a first answer, v0)
  turn 1, critic   prompt "c: 12+34=47\\n"     reply "no"   (its verdict on v0: "ok" or "no")
  turn 2, refiner  prompt "r: 12+34=47 no\\n"  reply "46"   (the refined answer, v1)

Each turn's prompt holds the replies before it (a chain: the generator samples the turns in
order, and the verifier rebuilds every prompt from the problem and the earlier replies).
The prompt's first letter names the role, as in solver_checker. Rewards, one per role, from
the exact checker (the builder's advantages are per (problem, role): role-conditioned):
  answer   1 when v0 is right (Arithmetic's score).
  critic   1 when its verdict agrees with the checker on v0 ("ok" for a right v0, "no" for
           a wrong one), else 0; a reply that is neither is malformed.
  refiner  right(v1) - right(v0): +1 for a fix, -1 for breaking a right answer, 0 for
           keeping it as it was (a malformed v1 is wrong); plus `refined_weight` x right(v1)
           (SCoRe's shaping, Kumar et al. 2024: r(v1) + alpha (r(v1) - r(v0)), scaled by
           1/alpha; GRPO's normalisation makes the scale moot). At 0 keeping a wrong answer
           earns what keeping a right one does; above 0 it earns less, so a group's advantages
           push the refiner off the answers it keeps wrong.
Parts kept beside each reward for the curves: the critic's `says_wrong` and v0's `first`,
the refiner's `first`, `correct` (v1 right), `flip_to_wrong` and `flagged` (the critique it
was shown said "no").

With `critic_working` the critic works the sum out before its verdict, a generative verifier
(as GenRM's chain-of-thought verifiers, Zhang et al. 2024): "c: 12+34=47" -> "46 no", its
own answer, a space, then the verdict. A one-token verdict asks one forward pass to add two
numbers and compare the sum with the answer shown; here the sum is meant to be written a
digit at a time, as the answerer writes it, and the verdict to compare two numbers in view
(measured in README: the critic learnt to copy the answer shown as its sum). The critic's
reward is still its agreement with the checker, plus `working_weight` x right(working) (its
part `working`), or with `working_improvement` `working_weight` x (right(working) - right(v0)):
the refiner's improvement, which takes the answer's own rightness as the baseline, so a
group's advantages for the sum come from the chains whose first answer was wrong. A
critique that is not an integer and a verdict is malformed. The refiner is shown the whole
critique ("r: 12+34=47 46 no"), so it can take the critic's sum. With `working_reversed`
the critic writes its sum least significant digit first ("64 no"; a sign last: "64-" is
-46), the order in which small transformers learn addition most easily (Lee et al. 2023:
each digit is then its column's sum and the carry just written), unlike the answerer, which
writes the most significant digit first. (Measured in README: on 2-digit sums the answerer
learnt addition with it, in two seeds of three too well to leave anything to catch.)
With `verdict_compared` the critic writes its sum alone ("46", or "64" reversed) and the task
draws the verdict from it: "ok" exactly when the sum equals the answer shown, as a checker's
assertions are run rather than believed (solver_checker). The critic's check is then its
sum, and its agreement with the checker is whether comparing its sum with the answer gives
the checker's verdict: a sum worked out right always does, a wrong one only against a wrong
answer it differs from. The refiner is shown the sum and that verdict ("r: 12+34=47 46 no",
the same critique as above; a critique that is not one integer is shown with "?"). Why:
with the first answer kept out of RL (README) the critic's own verdict after a right sum
followed that sum in only 82-91% of its last training chains, and agreement stayed under
0.85 in two seeds of three. (Measured in README: with the verdict drawn, agreement met 0.85
in every seed, but the critic's sum was right on only 0.27-0.60 of held-out problems, and the
refiner that wrote it broke 4-7% of the right answers.)

The supervised stage's labelled chains (`labelled`): the answer's target; the critic on
the right answer and on a wrong one (`near_miss`: one digit off, or off by 1 or 10, as a
small model errs), each with its verdict; the refiner on both, writing the right answer.
The held-out evaluation (`chain_summary`): greedy chains, first and refined accuracy, the
critic's agreement with the checker (and its shares of wrong first answers flagged and of
right ones passed), and flips both ways. Every chain whose two answers differ in rightness
is also a preference pair (schema.chain_pairs: the right one chosen)."""

from __future__ import annotations

import math
import random
from dataclasses import dataclass
from typing import ClassVar

from selfplay.stats import mean_interval
from selfplay.tasks.arithmetic import Arithmetic, final_answer, normalise
from selfplay.tasks.base import Problem, Score

ROLES = ("answer", "critic", "refiner")
ANSWER, CRITIC, REFINER = range(len(ROLES))
VERDICTS = {"ok": True, "no": False}  # the critic's reply -> "v0 is right"
CRITIC_PREFIX, REFINER_PREFIX = "c: ", "r: "


def verdict(reply: str) -> bool | None:
    """The critic's verdict (True: the answer is right), or None when the reply is neither."""
    return VERDICTS.get(reply.strip()) if isinstance(reply, str) else None


def read_sum(word: str, reversed_: bool = False) -> str | None:
    """The critic's sum as the checker reads an answer (normalised integer text), or None:
    `word` read backwards when `reversed_` ("64" is 46, "64-" is -46)."""
    return normalise(word[::-1] if reversed_ else word)


def worked_verdict(reply: str, reversed_: bool = False) -> tuple[str | None, bool | None]:
    """A critique with working ("46 no"): its sum (normalised integer text) and its verdict,
    both None unless the reply is exactly an integer, white space, then "ok" or "no".
    `reversed_`: the sum is written backwards ("64 no", "64- no" for -46)."""
    words = reply.split() if isinstance(reply, str) else []
    if len(words) != 2 or (says := verdict(words[1])) is None:
        return None, None
    if (work := read_sum(words[0], reversed_)) is None:
        return None, None
    return work, says


def compared_verdict(reply: str, answer: str, reversed_: bool = False) -> tuple[str | None, bool | None]:
    """With `verdict_compared`, a critique is the critic's sum alone ("46", reversed "64"):
    its sum (normalised integer text) and the verdict the task draws from it, True exactly
    when the sum equals the answer shown (`answer`, the first reply, read as the checker reads
    it; a malformed answer equals no sum). Both None unless the reply is one integer."""
    words = reply.split() if isinstance(reply, str) else []
    if len(words) != 1 or (work := read_sum(words[0], reversed_)) is None:
        return None, None
    return work, isinstance(answer, str) and work == normalise(final_answer(answer))


def near_miss(answer: str, rng: random.Random) -> str:
    """A wrong answer close to the integer `answer`, as a small model's errors are: one digit
    changed, or off by 1 or by 10 either way (never the answer itself)."""
    value = int(answer)
    while True:
        kind = rng.randrange(3)
        if kind == 0:
            digits = list(str(abs(value)))
            i = rng.randrange(len(digits))
            digits[i] = rng.choice([d for d in "0123456789" if d != digits[i]])
            wrong = ("-" if value < 0 else "") + "".join(digits)
        else:
            wrong = str(value + rng.choice((-1, 1)) * (1 if kind == 1 else 10))
        if normalise(wrong) != normalise(answer):
            return normalise(wrong)


@dataclass(frozen=True)
class CritiqueRefine(Arithmetic):
    name: ClassVar[str] = "refine"
    roles: ClassVar[tuple[str, ...]] = ROLES
    chain: ClassVar[bool] = True  # each role's prompt holds the replies of the roles before it
    refined_weight: float = 0.0  # the refiner's reward: improvement + this x right(v1) (module)
    critic_working: bool = False  # the critic writes its own sum before its verdict (module)
    working_weight: float = 0.0  # with critic_working: the critic's reward adds this x right(sum)
    working_improvement: bool = False  # ... x (right(sum) - right(v0)) instead (module)
    working_reversed: bool = False  # with critic_working: the sum written backwards (module)
    verdict_compared: bool = False  # with critic_working: the critic writes its sum alone (module)

    def __post_init__(self):
        super().__post_init__()
        if self.scratchpad:  # later prompts show the first answer on one line, bare
            raise ValueError(
                "task.params.scratchpad: refine shows the bare first answer to its critic; set false"
            )
        for key in ("refined_weight", "working_weight"):
            if not (math.isfinite(getattr(self, key)) and getattr(self, key) >= 0):
                raise ValueError(f"task.params.{key}: must be >= 0, got {getattr(self, key)!r}")
        if self.working_weight and not self.critic_working:
            raise ValueError("task.params.working_weight: rewards the critic's sum; set critic_working true")
        if self.working_reversed and not self.critic_working:
            raise ValueError(
                "task.params.working_reversed: writes the critic's sum backwards; set critic_working true"
            )
        if self.verdict_compared and not self.critic_working:
            raise ValueError(
                "task.params.verdict_compared: compares the critic's sum with the answer; set critic_working true"
            )
        if self.working_improvement and not self.working_weight:
            raise ValueError(
                "task.params.working_improvement: shapes working_weight's reward, which is 0; set it"
            )

    @property
    def max_reply_chars(self) -> int:
        """An answer's (Arithmetic's), or with critic_working a critique's: a sum, " ok"
        (with verdict_compared the sum alone)."""
        return super().max_reply_chars + 3 * (self.critic_working and not self.verdict_compared)

    def role_prompt(self, problem: Problem, role: int, before: list[str]) -> str:
        """Role `role`'s prompt, after the replies `before` of the roles before it (v0, then
        the critique). A reply is shown on one line, its runs of white space made one space:
        the whole of what the checker reads (cut at its first line, an answer "67\n7" showed
        as a right "67" while scored malformed, so a critic that trusted it lost and a
        refiner that copied it was paid for a fix)."""
        shown = [" ".join(b.split()) for b in before[:role]]
        if role == ANSWER:
            return problem.prompt
        if role == CRITIC:
            return f"{CRITIC_PREFIX}{problem.prompt}{shown[0]}\n"
        critique = shown[1]
        if self.verdict_compared:  # the critic's sum and the task's verdict on it; a reply that
            # is not one integer is shown with "?" (no verdict drawn), never as one that could
            # pass for a drawn verdict ("46 no" written by the critic itself)
            _, says = compared_verdict(before[CRITIC], before[ANSWER], self.working_reversed)
            critique += " ?" if says is None else (" ok" if says else " no")
        return f"{REFINER_PREFIX}{problem.prompt}{shown[0]} {critique}\n"

    def labelled(self, problem: Problem, rng: random.Random) -> list[tuple[int, str, str]]:
        """The supervised stage's (role, prompt, target) rows of one problem: the answer; the
        critic and the refiner after the right answer and after a near miss (see the module)."""
        right = problem.target  # the bare answer (no scratchpad)
        wrong = near_miss(problem.reference, rng)
        rows = [(ANSWER, problem.prompt, problem.target)]
        for v0, says in ((right, "ok"), (wrong, "no")):
            work = right[::-1] if self.working_reversed else right
            critique = (work if self.verdict_compared else f"{work} {says}") if self.critic_working else says
            rows.append((CRITIC, self.role_prompt(problem, CRITIC, [v0]), critique))
            rows.append((REFINER, self.role_prompt(problem, REFINER, [v0, critique]), problem.target))
        return rows

    def score_chain(self, problem: Problem, replies: list[str]) -> list[Score]:
        """The Score of each turn of one chain (v0, critique, v1): see the module."""
        v0, critique, v1 = replies
        first = self.score(problem.prompt, v0, problem.reference)
        right0 = first.total >= 1
        work = None
        if self.verdict_compared:
            work, says = compared_verdict(critique, v0, self.working_reversed)
        elif self.critic_working:
            work, says = worked_verdict(critique, self.working_reversed)
        else:
            says = verdict(critique)
        if says is None:  # a malformed critique: no agreement, and its sum counts as wrong
            parts = {"agree": 0.0, "first": float(right0), "format": 0.0}
            parts |= {"working": 0.0} if self.critic_working else {}
        else:
            parts = {
                "agree": float(says == right0),
                "says_wrong": float(not says),
                "first": float(right0),
                "format": 1.0,
            }
            if self.critic_working:
                parts["working"] = float(work == normalise(problem.reference))
        # the sum's pay: also a malformed critique's, which would otherwise out-earn a wrong
        # sum's -w under working_improvement
        shaped = parts.get("working", 0.0) - float(right0) * self.working_improvement
        critic = Score(
            parts["agree"] + self.working_weight * shaped,
            parts,
            says is not None,
            None if says is not None else "format",
        )
        last = self.score(problem.prompt, v1, problem.reference)
        right1 = last.total >= 1
        refined = Score(
            float(right1) - float(right0) + self.refined_weight * float(right1),
            {
                "correct": float(right1),
                "first": float(right0),
                "flip_to_wrong": float(right0 and not right1),
                "flagged": float(says is False),  # the critique it was shown said "no"
                "format": last.parts["format"],
            },
            last.valid,
            last.reason,
        )
        return [first, critic, refined]


def chain_summary(chains: list[list[Score]]) -> dict:
    """A held-out evaluation of greedy chains (score_chain's scores, one chain per problem):
    first and refined accuracy, the gain (a 95% interval over problems: the two answers are
    paired), the critic's agreement with the checker, its share of wrong first answers it
    flags and of right ones it passes ("ok": agreement alone rewards always saying "no" to a
    weak answerer), and the share of problems whose answer the refiner broke or fixed."""
    n = max(len(chains), 1)
    first = [c[ANSWER].total >= 1 for c in chains]
    refined = [c[REFINER].parts["correct"] >= 1 for c in chains]
    wrong = [c for c, ok in zip(chains, first) if not ok]
    right = [c for c, ok in zip(chains, first) if ok]
    gains = [float(b) - float(a) for a, b in zip(first, refined)]
    out = {
        "first_accuracy": sum(first) / n,
        "refined_accuracy": sum(refined) / n,
        "refine_gain": sum(gains) / n,
        "critic_agreement": sum(c[CRITIC].parts["agree"] for c in chains) / n,
        "critic_flags_wrong": sum(c[CRITIC].parts.get("says_wrong", 0.0) for c in wrong) / max(len(wrong), 1),
        "critic_passes_right": sum(c[CRITIC].parts["agree"] for c in right) / max(len(right), 1),
        "critic_valid": sum(c[CRITIC].valid for c in chains) / n,
        "flips_to_wrong": sum(a and not b for a, b in zip(first, refined)) / n,
        "flips_to_right": sum(b and not a for a, b in zip(first, refined)) / n,
    }
    if any("working" in c[CRITIC].parts for c in chains):  # critic_working: its sums right
        out["critic_working"] = sum(c[CRITIC].parts.get("working", 0.0) for c in chains) / n
    if len(gains) >= 2:
        out["refine_gain_lo"], out["refine_gain_hi"] = mean_interval(gains)
    return out
