"""What a person running `selfplay run` sees: a progress bar whose total and ETA follow
the limit that will actually end the run, the evaluations as they arrive, and where the
results are. Everything else this process prints, and what Ray forwards from the actors
(vLLM's and torch's warnings, Ray's own), goes to RUN_DIR/run.log instead.

The redirect works on file descriptors 1 and 2, so it catches output from C extensions
and Ray's log threads as well as Python's; the terminal is a duplicate of the original
stdout kept aside. `Console(None)` leaves the process's output alone (tests, the bench)."""

from __future__ import annotations

import os
import sys
from pathlib import Path


def bar_total(step: int, total_steps: int, steps_per_s: float | None, seconds_left: float) -> int:
    """The step the run will end at: `total_steps`, or sooner if the time limit comes
    first at the current pace (steps_per_s; None before the pace is known)."""
    if not steps_per_s or seconds_left == float("inf"):
        return total_steps
    return max(step, min(total_steps, step + int(steps_per_s * max(seconds_left, 0.0))))


RESULT_FIELDS = ("exploitability", "non_loss", "score", "accuracy", "promotions", "gold_retained")


def result_lines(summary: dict) -> list[str]:
    """The end of a run in a few lines: each evaluation before -> after (a game's non-loss,
    Kuhn exploitability, a task's mean score, a league's promotions), from summary.json's
    `before` and `after`."""
    before, after = summary.get("before", {}), summary.get("after", {})
    lines = []
    for key in sorted(set(before) | set(after)):
        fields = {**before.get(key, {}), **after.get(key, {})}
        field = next((f for f in RESULT_FIELDS if f in fields), "non_loss")
        then, now = before.get(key, {}).get(field), after.get(key, {}).get(field)
        show = [f"{v:.3f}" if v is not None else "-" for v in (then, now)]
        lines.append(f"  {key:<28} {field:<15} {show[0]:>6} -> {show[1]}")
    return lines


class Console:
    def __init__(self, log_path: Path | None):
        self.log = None
        self.saved: tuple[int, int] | None = None
        self.term = sys.stderr  # where the bar and key lines go
        if log_path is None:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        self.log = open(log_path, "a", buffering=1)
        self.saved = (os.dup(1), os.dup(2))
        self.term = os.fdopen(os.dup(1), "w", buffering=1)
        os.dup2(self.log.fileno(), 1)
        os.dup2(self.log.fileno(), 2)

    def print(self, text: str) -> None:
        """A line for the person watching (and the log)."""
        from tqdm import tqdm

        tqdm.write(text, file=self.term)
        if self.log is not None:
            self.log.write(text + "\n")

    def close(self) -> None:
        """Give the process its own stdout and stderr back."""
        if self.saved is None:
            return
        sys.stdout.flush()
        sys.stderr.flush()
        os.dup2(self.saved[0], 1)
        os.dup2(self.saved[1], 2)
        for fd in self.saved:
            os.close(fd)
        self.term.close()
        self.log.close()
        self.saved = None
        self.term = sys.stderr
