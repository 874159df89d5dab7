"""The TRL side of `bench/trl_peer.py`: TRL's GRPOTrainer on selfplay's arithmetic task,
from a model directory (the supervised checkpoint our run starts its RL from), for a wall
clock budget. Runs in TRL's own environment (`make peers`: .venv-peers, with the same
torch and transformers as ours); imports nothing of selfplay but its task (the problems
and the exact checker, pure Python) and the rule that picks bf16 autocast (model.py).

    .venv-peers/bin/python -m bench.trl_grpo --model DIR --seconds 300 --stop-at 0.55 --out trl.json

Writes {settings, versions, points: [{step, seconds, samples, reward}], ...} to --out:
seconds from the first step's start (the trainer's set-up excluded, as our run's engine
start is), the samples generated so far and the mean reward of the step's samples."""

from __future__ import annotations

import argparse
import json
import time
from importlib import metadata
from pathlib import Path

from selfplay.device import native_bf16

# TRL's own settings are its defaults except these, which match configs/grpo.yaml's RL
# stage (bench/README.md says which of ours each one is)
SETTINGS = {
    "num_generations": 8,  # task.samples_per_prompt
    "per_device_train_batch_size": 128,  # learner.batch_size: 16 prompts x 8 samples a step
    "learning_rate": 1.0e-4,  # learner.lr
    "lr_scheduler_type": "constant",  # ours is constant (TRL's default decays linearly)
    "max_completion_length": 8,  # generator.max_response_tokens
    "temperature": 1.0,  # generator.temperature
    "beta": 0.0,  # no KL reference (learner.reference false); TRL's default too
    "bf16": native_bf16("cpu"),  # bf16 autocast over fp32 weights where native, as learner.bf16 auto
    "use_cpu": True,
    "logging_steps": 1,
    "save_strategy": "no",
    "report_to": "none",
    "max_steps": 1_000_000,  # the clock ends it
    "disable_tqdm": True,
}


def problems(n: int, seed: int, params: dict | None = None) -> list[dict]:
    """n train problems of the arithmetic task with `params` (configs/grpo.yaml's: 2-digit
    sums), drawn from seeds as our generators draw theirs: prompt and reference."""
    from selfplay.tasks.arithmetic import Arithmetic

    task = Arithmetic(**(params or {"digits": 2, "terms": 2}))
    out = []
    for s in range(seed * n, seed * n + n):
        p = task.problem(s)
        out.append({"prompt": p.prompt, "reference": p.reference})
    return out


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--model", required=True, help="the model directory to start from")
    p.add_argument("--seconds", type=float, required=True, help="wall-clock budget of training")
    p.add_argument(
        "--stop-at",
        type=float,
        default=None,
        help="stop once the mean reward of the last --window steps reaches it",
    )
    p.add_argument("--window", type=int, default=50)
    p.add_argument("--out", required=True)
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--threads", type=int, default=2)
    p.add_argument("--problems", type=int, default=50_000)
    p.add_argument("--params", default='{"digits": 2, "terms": 2}', help="the task's params (JSON)")
    p.add_argument("--set", nargs="*", default=[], help="GRPOConfig overrides, key=value (JSON values)")
    args = p.parse_args(argv)

    import torch
    from datasets import Dataset
    from transformers import AutoModelForCausalLM, AutoTokenizer, TrainerCallback
    from trl import GRPOConfig, GRPOTrainer

    from selfplay.tasks.arithmetic import Arithmetic

    torch.set_num_threads(args.threads)
    params = json.loads(args.params)
    task = Arithmetic(**params)
    settings = {**SETTINGS, **{k: json.loads(v) for k, v in (s.split("=", 1) for s in args.set)}}

    def correct(prompts, completions, reference, **_) -> list[float]:
        return [task.score(p, c, r).total for p, c, r in zip(prompts, completions, reference)]

    points: list[dict] = []

    class Clock(TrainerCallback):
        """Records each step's mean reward against the clock; stops at the budget, or once
        the mean of the last `--window` steps' rewards reaches `--stop-at`."""

        start: float | None = None

        def on_step_begin(self, targs, state, control, **kw):
            if self.start is None:
                self.start = time.perf_counter()

        def on_log(self, targs, state, control, logs=None, **kw):
            if logs and "reward" in logs and self.start is not None:
                seconds = time.perf_counter() - self.start
                samples = state.global_step * settings["per_device_train_batch_size"]
                points.append(
                    {
                        "step": state.global_step,
                        "seconds": seconds,
                        "samples": samples,
                        "reward": logs["reward"],
                    }
                )
                recent = [q["reward"] for q in points[-args.window :]]
                reached = args.stop_at is not None and len(recent) == args.window
                if seconds >= args.seconds or (reached and sum(recent) / args.window >= args.stop_at):
                    control.should_training_stop = True

    tokenizer = AutoTokenizer.from_pretrained(args.model, padding_side="left")
    model = AutoModelForCausalLM.from_pretrained(args.model, dtype=torch.float32)
    config = GRPOConfig(output_dir=str(Path(args.out).parent / "trl-out"), seed=args.seed, **settings)
    trainer = GRPOTrainer(
        model=model,
        reward_funcs=correct,
        args=config,
        train_dataset=Dataset.from_list(problems(args.problems, args.seed, params)),
        processing_class=tokenizer,
        callbacks=[Clock()],
    )
    trainer.train()
    result = {
        "settings": settings,
        "seed": args.seed,
        "params": params,
        "threads": args.threads,
        "versions": {d: metadata.version(d) for d in ("trl", "transformers", "torch", "accelerate")},
        "points": points,
    }
    Path(args.out).write_text(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
