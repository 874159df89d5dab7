"""Tasks with a checker: the generate -> verify -> filter -> train family beyond games.
`make_task(name, **params)` is the one way in (as `make_game` is for games).

A task is a problem source and its scorer:
  name, max_reply_chars (the longest reply the scorer needs; generation stops there),
  problem(seed) -> Problem         the train split: a problem drawn from `seed`, never a
                                   held-out one (a problem's split is a pure function of its
                                   id, so train and held-out never overlap, whatever the seeds)
  held_out(n) -> [Problem]         the first n problems of the fixed held-out set
  score(prompt, response, reference) -> Score
A Problem carries its prompt, the reference the scorer checks against (a gold answer,
hidden unit tests as JSON) and an SFT target (a correct response, as the model should
write it). Scores keep their parts apart (`Score.parts`, columns of the trajectory
table), with the total the learner uses and a validity flag (the reply was well formed)."""

from __future__ import annotations

import dataclasses
import typing

from selfplay.tasks.arithmetic import Arithmetic
from selfplay.tasks.base import Problem, Score, held_out_id  # the interface, re-exported
from selfplay.tasks.codegen import CodeGen
from selfplay.tasks.describe import Describe
from selfplay.tasks.judges import Constitution
from selfplay.tasks.refine import CritiqueRefine
from selfplay.tasks.solver_checker import SolverChecker
from selfplay.tasks.words import NumberWords

__all__ = ["TASKS", "Problem", "Score", "gold_judge", "held_out_id", "make_task", "reply_tokens", "task_of"]

TASKS = {
    "arithmetic": Arithmetic,
    "codegen": CodeGen,
    "describe": Describe,
    "refine": CritiqueRefine,
    "solver_checker": SolverChecker,
    "words": NumberWords,
}
JUDGED = {"describe"}  # tasks with no checker of their own: a constitution (task.principles) scores them


def gold_judge(cfg) -> Constitution | None:
    """A TaskConfig's held-out gold judge (task.gold), or None."""
    return Constitution.from_config(cfg.gold, cfg.hard_floor, where="task.gold") if cfg.gold else None


def task_of(cfg):
    """The task of a TaskConfig (name, params and, for a judged task, its principles)."""
    return make_task(cfg.name, principles=cfg.principles, hard_floor=cfg.hard_floor, **cfg.params)


def make_task(name: str, principles: list[dict] | None = None, hard_floor: float = 0.0, **params):
    """The task `name` built from config params; an unknown name, an unknown parameter or an
    ill-typed value raises ValueError naming it (ints are accepted where a float is declared).
    `principles` (a judged task's constitution, see selfplay/tasks/judges.py) only for a judged task."""
    if name not in TASKS:
        raise ValueError(f"task: unknown task {name!r} (known: {', '.join(sorted(TASKS))})")
    cls = TASKS[name]
    judge = {}
    if name in JUDGED:
        if principles:
            judge["principles"] = Constitution.from_config(principles, hard_floor)
    elif principles:
        raise ValueError(
            f"task.principles: {name} has its own checker; principles judge {', '.join(sorted(JUDGED))}"
        )
    hints = typing.get_type_hints(cls)
    known = [f.name for f in dataclasses.fields(cls) if f.name != "principles"]
    kwargs = {}
    for key, value in params.items():
        if key not in known:
            raise ValueError(f"task.params.{key}: unknown parameter of {name} (known: {', '.join(known)})")
        typ = hints[key]
        if typ is float and type(value) is int:
            value = float(value)
        if type(value) is not typ:
            raise ValueError(f"task.params.{key}: expected {typ.__name__}, got {value!r}")
        kwargs[key] = value
    return cls(**kwargs, **judge)


def reply_tokens(task, max_response_tokens: int) -> int:
    """The token limit a task's reply is sampled under: the generators' limit, or the task's
    longest reply and an end of sequence where that is shorter (what the length guard,
    task.overlong_buffer, counts back from: a reply cut off by it ends there)."""
    return min(max_response_tokens, task.max_reply_chars + 1)
