"""What every task is made of: the Problem it poses, the Score its checker gives, and the
train/held-out split every task draws through (see the package for the interface)."""

from __future__ import annotations

import hashlib
import random
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field


@dataclass(frozen=True)
class Problem:
    task: str
    id: str  # stable across runs: the reference id (same problem, same id)
    prompt: str  # what the model is shown
    reference: str  # what the scorer checks against
    target: str  # an SFT target: a correct reply


@dataclass(frozen=True)
class Score:
    total: float  # the reward
    parts: dict[str, float] = field(default_factory=dict)  # per-part scores, e.g. {correct: 1, format: 1}
    valid: bool = True  # the reply was well formed (parsed)
    reason: str | None = None  # why it scored 0 when it did not run (timeout, crash, ...)


def held_out_id(problem_id: str, percent: int) -> bool:
    """Whether a problem belongs to the held-out split: a hash of its id, so the split
    never depends on which seed drew it."""
    digest = hashlib.sha256(problem_id.encode()).digest()
    return int.from_bytes(digest[:4], "big") % 100 < percent


def role_names(task, name: str) -> tuple[str, ...]:
    """The task's roles by name (`roles`, as solver_checker and refine name theirs), or a
    one-role task's only role: its name."""
    return getattr(task, "roles", None) or (name,)


def role_prompts(task, problem: Problem) -> list[str]:
    """The prompt of each of the task's roles for `problem`: its own prompt, unless the task
    names several roles (`roles` and `role_prompt(problem, role)`, as solver_checker does).
    A chain task's (refine) later roles' prompts hold earlier replies: only its first role's."""
    if getattr(task, "chain", False):
        return [problem.prompt]
    roles = getattr(task, "roles", None)
    return [task.role_prompt(problem, r) for r in range(len(roles))] if roles else [problem.prompt]


def role_targets(task, problem: Problem, rng: random.Random) -> list[str]:
    """A correct reply in each of the task's roles (SFT targets), in role_prompts' order;
    `rng` draws where a role has many (a checker's test input)."""
    roles = getattr(task, "roles", None)
    return [task.role_target(problem, r, rng) for r in range(len(roles))] if roles else [problem.target]


def labelled(task, problem: Problem, rng: random.Random) -> list[tuple[int, str, str]]:
    """The supervised stage's (role, prompt, target) rows of `problem`: a role's prompt and a
    correct reply in it, or a chain task's own rows (`labelled`: its later roles' prompts
    hold earlier replies, which the task makes up, right and wrong ones)."""
    if hasattr(task, "labelled"):
        return task.labelled(problem, rng)
    return [
        (r, *pair)
        for r, pair in enumerate(zip(role_prompts(task, problem), role_targets(task, problem, rng)))
    ]


# ---- Splits: shared by every task -------------------------------------------------------

MAX_TRAIN_DRAWS = 10_000  # redraws for one train problem; only a space with no train id runs out
ENUMERATE_LIMIT = 200_000  # problem spaces up to this size are counted exactly by held_out


def draw_train(task: str, seed: int, percent: int, draw: Callable[[random.Random], Problem]) -> Problem:
    """The train problem for `seed`: `draw` from `random.Random(seed)` until the id is not held out
    (the same rng keeps drawing, so the result is still a pure function of the seed)."""
    rng = random.Random(seed)
    for _ in range(MAX_TRAIN_DRAWS):
        problem = draw(rng)
        if not held_out_id(problem.id, percent):
            return problem
    raise ValueError(f"{task}: no train problem in {MAX_TRAIN_DRAWS} draws (held_out_percent={percent})")


def draw_held_out(
    task: str,
    n: int,
    percent: int,
    draw: Callable[[random.Random], Problem],
    space: Callable[[], Iterable[str]],
    size: int,
) -> list[Problem]:
    """The first n distinct held-out problems of one fixed sequence: `draw` from an rng seeded by
    the task's name, keeping held-out ids. Distinct problems lean towards the large end of a
    skewed space (arithmetic's 1-digit sums are few, so they run out early): the default
    arithmetic's first 400 held-out problems have 3.5 operand digits on average against 3.0
    in train draws, and the next 400 have 4.0. Every arm of a comparison asks the same first
    n, so they compare like with like; the accuracy is that of this set. `space` lists
    every id the task can draw and `size` counts them. A space of up to ENUMERATE_LIMIT ids is
    counted exactly, and asking for more held-out problems than it holds raises ValueError. A
    larger one offers half its expected held-out share (collecting nearly all of a huge space
    takes too many draws), and a draw budget stops a skewed distribution from looping forever."""
    if n <= 0:
        return []
    if size <= ENUMERATE_LIMIT:
        available = sum(held_out_id(i, percent) for i in space())
        what = f"{available} held-out problems in a space of {size}"
    else:
        available = size * percent // 200
        what = f"half of the ~{size * percent // 100} held-out problems expected in a space of {size}"
    if n > available:
        raise ValueError(f"{task}: held_out({n}) asks for more than {what}; enlarge the problem space")
    rng = random.Random(f"{task}:held-out")
    seen: set[str] = set()
    problems: list[Problem] = []
    budget = 1000 * n + 10_000
    for _ in range(budget):
        problem = draw(rng)
        if problem.id not in seen and held_out_id(problem.id, percent):
            seen.add(problem.id)
            problems.append(problem)
            if len(problems) == n:
                return problems
    raise ValueError(f"{task}: held_out({n}) found only {len(problems)} distinct problems in {budget} draws")


# ---- Scoring many replies ----------------------------------------------------------------
TRANSIENT = frozenset({"timeout", "sandbox_error"})  # may not repeat (a loaded machine): never cached


class ScoreCache:
    """`score` with memory: a small policy repeats itself (the k samples of a prompt are
    often one reply), and a code reply costs a sandbox run to score, so each distinct
    (prompt, reply, reference) is scored once. A score whose reason may not repeat
    (TRANSIENT) is not kept. At most `size` entries, the oldest dropped first."""

    def __init__(self, score: Callable[[str, str, str], Score], size: int = 1 << 16):
        self.score = score
        self.size = size
        self.memory: dict[tuple[str, str, str], Score] = {}
        self.calls = 0  # of `score` itself

    def __call__(self, prompt: str, response: str, reference: str) -> Score:
        key = (prompt, response, reference)
        if key in self.memory:
            return self.memory[key]
        self.calls += 1
        result = self.score(prompt, response, reference)
        if result.reason not in TRANSIENT:
            if len(self.memory) >= self.size:
                del self.memory[next(iter(self.memory))]
            self.memory[key] = result
        return result
