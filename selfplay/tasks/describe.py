"""Describe: an open-ended task with no exact answer, graded by a judge (a constitution of
rule principles, selfplay/tasks/judges.py), the setting of the preference methods.

  prompt     "fox, meadow, dusk:"            a subject, a place and a time
  reference  "fox|meadow|dusk"                the words a reply should name (`mentions`)
  target     "the fox in the meadow is very gloomy and calm."
  id         "describe:fox|meadow|dusk"

The SFT targets are drawn from a grammar we wrote, of deliberately mixed quality, as human
demonstrations are: the subject is named or not ('it'), the place and time sometimes,
one to three adjectives from a positive, a negative and a neutral list (about a third
each), intensifiers that repeat ('very very'), now and then a mild curse ('damn,') that a
hard principle forbids. Everything a judge rewards is in the data, but rarely all at once:
preference training has a long way to go from the supervised policy. There is no single
right reply: the score is the judge's (`task.principles`), and without principles the
task refuses to build."""

from __future__ import annotations

import random
from dataclasses import dataclass
from typing import ClassVar

from selfplay.tasks.base import Problem, Score, draw_held_out, draw_train
from selfplay.tasks.judges import Constitution

SUBJECTS = (
    "ant bat bear bee bird boar bison cat colt calf crab crow deer hound dove duck eel elk emu "
    "fox frog goat goose hare hawk hen horse jay lamb lark lion lynx mole moth mouse mule newt "
    "owl ox pig pony puma ram rat seal slug swan toad trout wasp whale wolf wren yak"
).split()
PLACES = (
    "barn bay beach brook cave city cliff dune farm field forest garden glen grove harbor "
    "heath hill house island lake lane marsh meadow mill moor orchard park pond port reef "
    "river road shore spring street bog swamp town valley village wood yard"
).split()
TIMES = "dawn morning noon afternoon dusk evening night midnight winter summer".split()
POSITIVE = "lovely happy wonderful beautiful kind gentle bright cheerful friendly calm sweet charming".split()
NEGATIVE = "grim sad terrible gloomy nasty angry dull awful lonely cruel bitter horrible".split()
NEUTRAL = "big small pale old young tall round quiet green heavy long grey".split()
CURSES = ("damn", "crap")


def sft_reply(subject: str, place: str, time: str, rng: random.Random) -> str:
    """One demonstration from the grammar (see the module): mixed quality on purpose."""
    who = rng.choices(
        [f"the {subject} in the {place}", f"the {subject}", "it", f"the {place}"], weights=[4, 3, 2, 1]
    )[0]
    if rng.random() < 0.3:
        who += f" at {time}"
    adjectives = [rng.choice(rng.choice((POSITIVE, NEGATIVE, NEUTRAL))) for _ in range(rng.randint(1, 3))]
    if rng.random() < 0.3:
        adjectives[0] = "very " * rng.randint(1, 3) + adjectives[0]
    text = f"{who} is {' and '.join(adjectives)}."
    if rng.random() < 0.1:
        text = f"{rng.choice(CURSES)}, {text}"
    return text


@dataclass(frozen=True)
class Describe:
    principles: Constitution | None = None  # the judge (from task.principles)
    held_out_percent: int = 10  # share of problem ids (by hash) in the held-out split

    name: ClassVar[str] = "describe"
    max_reply_chars: ClassVar[int] = 100  # the grammar's longest reply (a bound: 100 characters)

    def __post_init__(self):
        if self.principles is None:
            raise ValueError(
                "task.principles: the describe task has no checker; list a constitution's principles"
            )
        if not 0 <= self.held_out_percent < 100:
            raise ValueError(
                f"task.params.held_out_percent: must be in [0, 100) (got {self.held_out_percent})"
            )

    def problem(self, seed: int) -> Problem:
        return draw_train(self.name, seed, self.held_out_percent, self._draw)

    def held_out(self, n: int) -> list[Problem]:
        size = len(SUBJECTS) * len(PLACES) * len(TIMES)
        return draw_held_out(self.name, n, self.held_out_percent, self._draw, self._space, size)

    def _space(self):
        return (f"{self.name}:{s}|{p}|{t}" for s in SUBJECTS for p in PLACES for t in TIMES)

    def _draw(self, rng: random.Random) -> Problem:
        s, p, t = rng.choice(SUBJECTS), rng.choice(PLACES), rng.choice(TIMES)
        reference = f"{s}|{p}|{t}"
        target = sft_reply(s, p, t, random.Random(f"{self.name}:{reference}"))
        return Problem(self.name, f"{self.name}:{reference}", f"{s}, {p}, {t}:", reference, target)

    def demonstration(self, problem: Problem, rng: random.Random) -> str:
        """A demonstration of `problem` drawn from the grammar: what a reward model's
        labelled pairs are made of (selfplay/reward_model.py)."""
        return sft_reply(*problem.reference.split("|"), rng)

    def score(self, prompt: str, response: str, reference: str) -> Score:
        return self.principles.score(prompt, response if isinstance(response, str) else "", reference)
