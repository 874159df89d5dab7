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

POLICIES = "kuhn_policies.jsonl"  # every evaluation's policy table, in step order
AVERAGE = "average_policy.json"  # the latest average and the evaluations it spans


class KuhnAverage:
    """`add` each evaluation of the current policy; `tail` in (0, 1]: the newest share of
    the evaluations averaged (at least one). A resumed run keeps the evaluations up to the
    step it resumes from (`keep_until`; -1 for a new run: none). Both files are rewritten
    whole (atomically) at each change: a crash leaves the previous ones."""

    def __init__(self, run_dir: Path, tail: float, keep_until: int = -1):
        if not 0 < tail <= 1:
            raise ValueError(f"eval.kuhn_average_tail: must be in (0, 1], got {tail}")
        self.path, self.out, self.tail = run_dir / POLICIES, run_dir / AVERAGE, tail
        lines = self.path.read_text().splitlines() if self.path.exists() else []
        self.rows = [r for r in map(json.loads, filter(None, lines)) if r["step"] <= keep_until]
        self._write(self.average() if self.rows else None)

    def add(self, step: int, version: int, policy: dict[str, list[float]], checksum: str) -> dict:
        """Record an evaluation's policy in step order (evaluations may finish out of
        order); returns the average now (see `average`). Weights measured again count once,
        known by their checksum: a version is not the weights' identity (with
        learner.broadcast_every > 1 two evaluations between broadcasts measure other
        weights under one version, and the final settle re-broadcasts the last weights
        under a new one)."""
        # rows written before checksums were kept are known by their version
        if any(r["checksum"] == checksum if "checksum" in r else r["version"] == version for r in self.rows):
            return self.average()
        self.rows.append({"step": step, "version": version, "checksum": checksum, "policy": policy})
        self.rows.sort(key=lambda r: (r["step"], r["version"]))
        result = self.average()
        self._write(result)
        return result

    def _write(self, average: dict | None) -> None:
        """RUN_DIR/kuhn_policies.jsonl, and RUN_DIR/average_policy.json (`average`; none
        before the first evaluation)."""
        write_atomic(self.path, "".join(json.dumps(r) + "\n" for r in self.rows))
        if average is None:
            self.out.unlink(missing_ok=True)
        else:
            write_atomic(self.out, json.dumps(average, indent=1))

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
