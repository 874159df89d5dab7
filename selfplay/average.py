"""Kuhn poker's average policy over a run: the policies its evaluations measured (each at
fixed weights), kept in RUN_DIR/kuhn_policies.jsonl, and the sequence-form average of the
newest share of them (games/kuhn.py:average_policy), which is the policy of playing each
game with one of those evaluated weights drawn uniformly. Policy-gradient self-play cycles
around an equilibrium of an imperfect-information game; fictitious play, CFR and NFSP
report the average policy, which converges where the last iterate need not."""

from __future__ import annotations

import json
import math
from pathlib import Path

from selfplay.files import write_atomic
from selfplay.games import kuhn

POLICIES = "kuhn_policies.jsonl"  # every evaluation's policy table, in order
AVERAGE = "average_policy.json"  # the latest average and the evaluations it spans


class KuhnAverage:
    """`add` each evaluation of the current policy; `tail` in (0, 1]: the newest share of
    the evaluations averaged (at least one). A resumed run keeps the evaluations up to the
    step it resumes from (`keep_until`; -1 for a new run: none)."""

    def __init__(self, run_dir: Path, tail: float, keep_until: int = -1):
        if not 0 < tail <= 1:
            raise ValueError(f"eval.kuhn_average_tail: must be in (0, 1], got {tail}")
        self.path, self.out, self.tail = run_dir / POLICIES, run_dir / AVERAGE, tail
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        self.rows = [r for r in map(json.loads, filter(None, lines)) if r["step"] <= keep_until]
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))

    def add(self, step: int, version: int, policy: dict[str, list[float]]) -> dict:
        """Record an evaluation's policy; returns the average now (see `average`) and
        writes it to RUN_DIR/average_policy.json. Weights measured again (the same version
        as the last, e.g. the final evaluation after the last periodic one) count once."""
        if self.rows and self.rows[-1]["version"] == version:
            return self.average()
        row = {"step": step, "version": version, "policy": policy}
        self.rows.append(row)
        with self.path.open("a") as f:
            f.write(json.dumps(row) + "\n")
        result = self.average()
        write_atomic(self.out, json.dumps(result, indent=1))
        return result

    def average(self) -> dict:
        """The average of the newest ceil(tail * n) evaluations: its policy, exploitability,
        and the evaluations it spans (their count, first and last step)."""
        if not self.rows:
            raise ValueError("KuhnAverage: no evaluations yet")
        window = self.rows[-max(1, math.ceil(self.tail * len(self.rows))) :]
        policy = kuhn.average_policy([r["policy"] for r in window])
        return {
            "exploitability": kuhn.exploitability(policy),
            "evaluations": len(window),
            "from_step": window[0]["step"],
            "to_step": window[-1]["step"],
            "policy": policy,
        }
