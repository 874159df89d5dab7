"""The best checkpoint by a held-out evaluation, kept beside the last one.

The rule is the run's first acceptance target (config `acceptance`): its evaluation field
ranks the periodic evaluations of fixed weights (higher is better for '>=' and '>', lower
for '<=' and '<'). Each time an evaluation beats the best so far, the weights it measured
are written to RUN_DIR/best/ as an HF model directory (vLLM and transformers load it, and
`selfplay eval` plays it), with best.json saying which step, version and value. At the end
of the run the best weights are evaluated afresh beside the final policy: a new set of
games, so the figure reported for them is not the maximum of noisy evaluations. A task's
evaluation asks the same held-out problems greedily, so there it would be: a task run
keeps the best checkpoint and its figure in summary.json's `best`, marked as selected on
the held-out evaluations, and reports only the final policy's gap to it as acceptance."""

from __future__ import annotations

import json
import os
import shutil
from pathlib import Path

from safetensors.torch import load as load_safetensors

from selfplay.evals import acceptance, measured
from selfplay.weights import state_checksum

HIGHER = {">=": True, ">": True, "<=": False, "<": False}
GAIN = "_gain_over_"  # FIELD_gain_over_STAGE: see selfplay/driver.py:gain_over


def best_rule(targets: dict[str, str]) -> tuple[str, str, bool] | None:
    """(evaluation key 'GAME/OPPONENT', field, higher is better) of the first acceptance
    target, or None when the run has none."""
    if not targets:
        return None
    name, target = next(iter(targets.items()))
    key, field = name.rsplit("/", 1)
    # a gain over an earlier stage (accuracy_gain_over_sft) ranks by the field it is a gain of
    return key, field.split(GAIN)[0], HIGHER[target.split()[0]]


def improves(value: float, best: float | None, higher: bool) -> bool:
    """Strictly better than the best so far (the first value always is): ties keep the
    earlier weights."""
    return best is None or (value > best if higher else value < best)


class BestCheckpoint:
    """`offer` each finished evaluation of the current policy; `weights` ({ref: [object
    ref], version, step, checksum}, as the learner's current_weights) are the weights the
    best evaluation measured, for evaluating them again at the end."""

    def __init__(
        self,
        targets: dict[str, str],
        run_dir: Path,
        model_dir: str,
        put=None,
        resume_from: Path | None = None,
    ):
        """`resume_from`: the checkpoint a run resumes from, whose copy of the best (`keep`)
        is restored: a best found after that checkpoint came from steps the run takes again,
        and is dropped with them."""
        self.rule = best_rule(targets)
        self.dir = run_dir / "best"
        self.model_dir = Path(model_dir)  # config and tokenizer files to copy beside the weights
        self.value: float | None = None
        self.weights: dict | None = None
        self.info: dict = {}
        if resume_from is not None:
            self._restore(Path(resume_from))
        if put is not None and (self.dir / "best.json").exists():  # a resumed run keeps its best
            self.info = json.loads((self.dir / "best.json").read_text())
            self.value = self.info["value"]
            blob = (self.dir / "model.safetensors").read_bytes()
            checksum = state_checksum(load_safetensors(blob))
            self.weights = {
                "ref": [put(blob)],
                "version": self.info["version"],
                "step": self.info["step"],
                "checksum": checksum,
                "averaged": self.info.get("averaged", False),
            }

    def keep(self, checkpoint: Path) -> None:
        """A copy of the best so far in `checkpoint`/best (hard links: a later best is
        written as new files, so the copy stays as it was), for a resume from there."""
        if (self.dir / "best.json").exists():
            link_copy(self.dir, checkpoint / "best")

    def _restore(self, checkpoint: Path) -> None:
        """RUN_DIR/best as it stood at `checkpoint`'s step. A best of weights no later than
        that step stays, even when found after the checkpoint was written (the step's own
        evaluation finishes after its checkpoint, whose copy is then older): its steps are
        not taken again. A later one came from steps the run takes again: the checkpoint's
        copy replaces it, and with none (no best yet then, or a checkpoint from before
        copies were kept), it is dropped."""
        step = json.loads((checkpoint / "driver_state.json").read_text())["step"]
        found = self.dir / "best.json"
        if found.exists() and json.loads(found.read_text())["step"] <= step:
            return
        kept = checkpoint / "best"
        if kept.is_dir():
            tmp = self.dir.with_name(self.dir.name + ".tmp")
            shutil.rmtree(tmp, ignore_errors=True)
            link_copy(kept, tmp)
            swap_in(tmp, self.dir)
        else:
            shutil.rmtree(self.dir, ignore_errors=True)

    @property
    def metric(self) -> str | None:
        return None if self.rule is None else "/".join(self.rule[:2])

    def offer(self, key: str, result: dict, weights: dict, fetch) -> bool:
        """Keep `weights` if `result` (evaluation `key`, measured on them) is the best so
        far by the rule; returns whether it was. `fetch(weights) -> bytes` gets the bytes."""
        if self.rule is None or key != self.rule[0] or self.rule[1] not in result or not measured(result):
            return False  # not the rule's, or of no games (its rates read 0, which no later value beat)
        value = result[self.rule[1]]
        if not improves(value, self.value, self.rule[2]):
            return False
        self.value, self.weights = value, weights
        self.info = {
            "metric": self.metric,
            "value": value,
            "step": weights["step"],
            "version": weights["version"],
            "averaged": weights.get("averaged", False),  # the weights' moving average (learner.ema_decay)
        }
        self.write(fetch(weights))
        return True

    def write(self, blob: bytes) -> None:
        """RUN_DIR/best/: these weights (in the engine's dtype) and best.json."""
        write_model_dir(self.dir, self.model_dir, blob, {"best.json": self.info})


def write_model_dir(directory: Path, model_dir: Path, blob: bytes, info: dict[str, dict]) -> None:
    """An HF model directory: `model_dir`'s config and tokenizer files, `blob` (safetensors
    bytes) as model.safetensors, and each info file (name -> JSON). Written beside, then
    swapped in, so a crash mid-write leaves the previous one whole."""
    tmp = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(tmp, ignore_errors=True)
    tmp.mkdir(parents=True)
    for f in model_dir.iterdir():
        if f.is_file() and not f.name.endswith((".safetensors", ".safetensors.index.json", ".bin")):
            shutil.copy(f, tmp / f.name)
    (tmp / "model.safetensors").write_bytes(blob)
    for name, content in info.items():
        (tmp / name).write_text(json.dumps(content))
    swap_in(tmp, directory)


def swap_in(tmp: Path, directory: Path) -> None:
    """`tmp` becomes `directory`: the old one renamed aside, the new one in, then the old one
    deleted, so it is without a name only between two renames (a resume restores the best
    from its checkpoint's copy)."""
    old = directory.with_name(directory.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if directory.exists():
        directory.rename(old)
    tmp.rename(directory)
    shutil.rmtree(old, ignore_errors=True)


def link_copy(source: Path, copy: Path) -> None:
    """`copy`, a new directory of hard links to `source`'s files (copies where the
    filesystem has no hard links): a file later written anew under `source` leaves it as
    it was."""
    copy.mkdir()
    for f in source.iterdir():
        try:
            os.link(f, copy / f.name)
        except OSError:
            shutil.copy(f, copy / f.name)


def best_acceptance(targets: dict[str, str], after: dict, best_after: dict, tolerance: float = 0.05) -> dict:
    """Acceptance figures of the best checkpoint, beside the final policy's: the ranking
    target met by the best weights (evaluated afresh, `best_after`), and the final policy
    within `tolerance` of them (final - best >= -tolerance where higher is better)."""
    rule = best_rule(targets)
    if rule is None:
        return {}
    name = next(iter(targets))
    key, field, higher = rule
    final, best = after.get(key, {}).get(field), best_after.get(key, {}).get(field)
    named = name.rsplit("/", 1)[1]  # the target's own field (a gain: the same difference)
    gap = {key: {named: final - best}} if final is not None and best is not None else {}
    return {
        f"best/{name}": acceptance(best_after, {name: targets[name]})[name],
        f"final_minus_best/{name}": acceptance(
            gap, {name: f">= -{tolerance}" if higher else f"<= {tolerance}"}
        )[name],
    }
