"""Learner MFU (`make bench` figure 2): the plain learner's step FLOP/s against the
machine's matmul rate in the learner's compute dtype (bf16 where the CPU has it natively,
else fp32: `learner/peak.py:compute_dtype`), measured in the same run (`learner/peak.py:matmul_flops`, on the
learner's threads).

What is timed: `Learner.train_step` on the demo's batch shape (512 TicTacToe turns of a
23-token prompt and a 1-token move, GAE with its value head, bf16 autocast where native,
AdamW), the median of 3 steps after a warm-up, or of fewer where they would take over
20 s (one at 25m); every part of a step is inside (collation, forward, backward,
optimiser, metrics), attention on the kernel the learner picks for the length
(`learner.math_attention_max_len`); where that is the math kernel, the same steps on the
flash kernel are timed beside them (`flash_attention_step_s`). Model FLOPs are 6 x
non-embedding parameters per token. Beside it, the same batch's bare forward + backward +
optimiser step on the same model (`model_only`, timed the same way with the learner's
steps as its warm-up), which says how much of the gap is the learner's own work and how
much the model's shapes at this size. For the presets in `--compiled` (1m by default), the
same steps by a learner with `learner.compile` (torch.compile of the policy's forward),
side by side: `compiled_speedup_1m`, the eager step's time over the compiled one's.

    .venv/bin/python -m bench.learner_mfu
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

from bench.gpu_learner import learner_for, synthetic_batch
from bench.suite import RESULTS, figure, machine, write
from learner.learner import collate, math_attention
from learner.peak import compute_dtype, matmul_flops
from selfplay.model import create_default_model

GOAL_PRESET, GOAL = "25m", ">= 0.30"


def median_s(fn, repeats: int = 3, budget_s: float = 20.0, warm_up: bool = True) -> float:
    """Seconds of one `fn()`: the median of `repeats`, or of fewer (at least one) where
    the next would end past `budget_s` of measuring (a 25m step takes 20-25 s here)."""
    if warm_up:
        fn()
    times: list[float] = []
    while len(times) < repeats and (not times or sum(times) + times[-1] <= budget_s):
        t = time.perf_counter()
        fn()
        times.append(time.perf_counter() - t)
    return sorted(times)[len(times) // 2]


def measure(
    preset: str, turns: int, prompt: int, response: int, threads: int, tmp: Path, compiled: bool = False
) -> dict:
    model_dir = str(create_default_model(tmp / preset, preset, prompt + response + 8))
    settings = [f"learner.threads={threads}", "learner.advantage=gae", "buffer.whole_games=true"]
    learner = learner_for(model_dir, settings)
    table = synthetic_batch(turns, prompt, response, 100, seed=0)
    step_s = median_s(lambda: learner.train_step(table))
    # the same steps with attention on PyTorch's flash kernel (learner.math_attention_max_len 0),
    # side by side, where the learner's default picks the math kernel for this length
    default_max_len = learner.cfg.math_attention_max_len
    flash_s = None
    if math_attention(learner.device.type, prompt + response, default_max_len):
        learner.cfg.math_attention_max_len = 0
        flash_s = median_s(lambda: learner.train_step(table))
        learner.cfg.math_attention_max_len = default_max_len
    tokens = turns * (prompt + response)
    flops = learner.flops_per_token * tokens

    batch = collate(table.to_pylist(), learner.pad_id)
    model, opt = learner.model, learner.opt

    def bare() -> None:
        opt.zero_grad(set_to_none=True)
        with learner._compute(batch):
            logits = model(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"]).logits
        logits.float().logsumexp(-1).mean().backward()
        opt.step()

    bare_s = median_s(bare, warm_up=False)  # the learner's steps above warmed the same model and optimiser
    compiled_s = None
    if compiled:  # the same steps by a learner with learner.compile; its warm-up step compiles
        compiled_learner = learner_for(model_dir, [*settings, "learner.compile=true"])
        compiled_s = median_s(lambda: compiled_learner.train_step(table))
    return {
        "parameters": sum(p.numel() for p in model.parameters()),
        "flops_per_step": flops,
        "step_s": step_s,
        "tokens_per_s": tokens / step_s,
        "model_only_s": bare_s,
        "flash_attention_step_s": flash_s,
        "compiled_step_s": compiled_s,
    }


def main(argv: list[str] | None = None) -> dict:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--presets", default="1m,3m,25m")
    p.add_argument("--turns", type=int, default=512)
    p.add_argument("--prompt", type=int, default=23)
    p.add_argument("--response", type=int, default=1)
    p.add_argument("--threads", type=int, default=0, help="0: every core of this process")
    p.add_argument(
        "--compiled", default="1m", help="presets also timed with learner.compile (comma-separated; '' none)"
    )
    p.add_argument("--results", type=Path, default=None)
    args = p.parse_args(argv)
    facts = machine()
    threads = args.threads or facts["cores"]
    dtype = compute_dtype("cpu")
    runs, peaks = {}, []
    with tempfile.TemporaryDirectory() as tmp:
        for preset in args.presets.split(","):  # the rate measured again beside each, so drift shows
            peaks.append(matmul_flops("cpu", dtype, threads))
            compiled = preset in args.compiled.split(",")
            runs[preset] = measure(
                preset, args.turns, args.prompt, args.response, threads, Path(tmp), compiled
            )
    peaks.append(matmul_flops("cpu", dtype, threads))
    peak, figures = max(peaks), {}
    for preset, r in runs.items():
        r["mfu"] = r["flops_per_step"] / r["step_s"] / peak
        r["model_only_mfu"] = r["flops_per_step"] / r["model_only_s"] / peak
        flash = r["flash_attention_step_s"]
        figures[f"mfu_{preset}"] = figure(
            r["mfu"],
            GOAL if preset == GOAL_PRESET else None,
            note=f"model only {r['model_only_mfu']:.2f}"
            + (
                f"; on the flash attention kernel a step takes {flash / r['step_s']:.2f}x as long"
                if flash
                else ""
            ),
        )
        if r["compiled_step_s"]:
            figures[f"compiled_speedup_{preset}"] = figure(
                r["step_s"] / r["compiled_step_s"],
                None,
                note=f"eager {r['step_s']:.3f} s a step, compiled {r['compiled_step_s']:.3f} s",
            )
        print(
            f"{preset}: step {r['step_s']:.3f} s, {r['tokens_per_s']:,.0f} tokens/s, MFU {r['mfu']:.3f} "
            f"(model only: {r['model_only_s']:.3f} s, {r['model_only_mfu']:.3f})",
            flush=True,
        )
    write(
        "learner_mfu",
        figures,
        facts,
        args.results or RESULTS,
        matmul_flops=peak,
        matmul_flops_measured=peaks,
        compute_dtype=str(dtype).removeprefix("torch."),
        threads=threads,
        batch={"turns": args.turns, "prompt": args.prompt, "response": args.response},
        runs=runs,
    )
    print(f"{dtype} matmul on {threads} threads: {peak / 1e9:.0f} GFLOP/s (the best of {len(peaks)})")
    return figures


if __name__ == "__main__":
    main()
