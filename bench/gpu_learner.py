"""The plain learner class on a GPU: torch and transformers only (no Ray, no vLLM), so it
runs on a machine that has nothing else. Measures, on a model built locally from a preset
(random weights; throughput does not depend on them):

- device selection: `learner.device: auto` picks the GPU;
- one training step per memory setting (the whole batch in one pass, micro-batches with
  gradient accumulation, plus gradient checkpointing; rank-16 LoRA; the first micro-batch
  size with the optimiser's state offloaded to the host): seconds, tokens/s, MFU against
  `--peak-tflops` (the datasheet) and against the device's matmul rate in the learner's
  compute dtype (bf16 where native, else fp32) measured in the same run, peak device memory;
- gradient accumulation: the gradient of micro-batches against the one-pass gradient of
  the same batch (fp32, relative L2 error and max |delta|);
- a checkpoint written on the GPU loads into a learner on the CPU: the same weights,
  optimiser moments and step.

Writes OUT/gpu_learner.json. On a CPU (here) it runs the same code on a small preset:

    .venv/bin/python -m bench.gpu_learner --preset 1m --batch 16 --out /tmp/gpu
"""

from __future__ import annotations

import argparse
import json
import tempfile
import time
from pathlib import Path

import torch

from learner.learner import Learner
from learner.peak import compute_dtype, matmul_flops
from selfplay import schema
from selfplay.config import load_config
from selfplay.device import pick_device
from selfplay.model import create_default_model
from tests.rows import make_row


def synthetic_batch(n: int, prompt: int, response: int, vocab: int, seed: int):
    """`n` self-play turns of `prompt` + `response` random tokens, with returns +-1."""
    g = torch.Generator().manual_seed(seed)
    rows = []
    for i in range(n):
        ids = torch.randint(6, vocab, (prompt + response,), generator=g).tolist()
        rows.append(
            make_row(
                traj_id=f"t{i // 4}",
                turn=i % 4,
                role=i % 2,
                prompt_ids=[1] + ids[: prompt - 1],
                response_ids=ids[prompt - 1 : prompt - 1 + response],  # prompt + response tokens in all
                behaviour_logprobs=[-4.0] * response,
                ret=1.0 if i % 3 else -1.0,
            )
        )
    return schema.from_rows(rows)


def learner_for(model_dir: str, settings: list[str]) -> Learner:
    cfg = load_config(None, settings)
    return Learner(cfg.learner, cfg.model, model_dir, seed=0)


def peak_gib(device: torch.device) -> float | None:
    return torch.cuda.max_memory_allocated(device) / 2**30 if device.type == "cuda" else None


def step_figures(learner: Learner, table, repeats: int, measured_flops: float) -> dict:
    """A warm-up step, then the median of `repeats` timed ones."""
    device = learner.device
    learner.train_step(table)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    times, last = [], {}
    for _ in range(repeats):
        t = time.perf_counter()
        last = learner.train_step(table)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        times.append(time.perf_counter() - t)
    step_s = sorted(times)[len(times) // 2]
    return {
        "step_s": round(step_s, 4),
        "tokens_per_s": round(last["tokens"] / step_s),
        "mfu": round(learner.flops_per_token * last["tokens"] / step_s / learner.peak_flops, 4),
        # against the device's matmul rate in the learner's compute dtype, measured in this run
        "mfu_measured": round(learner.flops_per_token * last["tokens"] / step_s / measured_flops, 4),
        "peak_gib": peak_gib(device) and round(peak_gib(device), 2),
        "micro_batches": last["micro_batches"],
        "loss": round(last["loss"], 5),
    }


def flat_grad(learner: Learner) -> torch.Tensor:
    return torch.cat([p.grad.flatten().double().cpu() for p in learner.model.parameters()])


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--preset", default="500m")
    parser.add_argument("--batch", type=int, default=128, help="turns per step")
    parser.add_argument("--micro", default="16,64", help="turns per micro-batch, comma-separated")
    parser.add_argument(
        "--advantage", default="gae", choices=["gae", "rae"], help="gae: a value head (and a pre-pass)"
    )
    parser.add_argument("--prompt", type=int, default=224)
    parser.add_argument("--response", type=int, default=32)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument(
        "--no-checks", action="store_true", help="throughput only: no accumulation or checkpoint check"
    )
    parser.add_argument("--peak-tflops", type=float, default=989.0, help="the device's dense bf16 peak")
    parser.add_argument("--out", required=True)
    args = parser.parse_args(argv)
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    result: dict = {"torch": torch.__version__, "cuda": torch.cuda.is_available()}
    if torch.cuda.is_available():
        result["gpu"] = torch.cuda.get_device_name(0)

    def save() -> None:
        (out / "gpu_learner.json").write_text(json.dumps(result, indent=1))

    device = pick_device("auto")
    result["picked_device"] = str(device)
    dtype = compute_dtype(device.type)  # the learner's autocast dtype there (learner.bf16 auto)
    measured = matmul_flops(str(device), dtype, n=8192 if device.type == "cuda" else 1024)
    result["matmul_tflops"] = round(measured / 1e12, 3)
    result["compute_dtype"] = str(dtype).removeprefix("torch.")
    with tempfile.TemporaryDirectory() as tmp:
        t = time.perf_counter()
        model_dir = str(
            create_default_model(Path(tmp) / "model", args.preset, args.prompt + args.response + 8)
        )
        result["build_model_s"] = round(time.perf_counter() - t, 1)
        base = [
            f"learner.peak_tflops={args.peak_tflops}",
            f"learner.advantage={args.advantage}",
            "buffer.whole_games=true",
        ]
        micros = [int(m) for m in args.micro.split(",")]
        table = synthetic_batch(args.batch, args.prompt, args.response, 100, seed=0)

        # 1. throughput and memory per setting (bf16 autocast, AdamW, a value head)
        learner = learner_for(model_dir, base)
        result["parameters"] = sum(p.numel() for p in learner.model.parameters())
        result["learner_device"] = str(learner.device)
        settings = {"one_pass": {"micro_batch_size": 0}}
        settings.update({f"micro_{m}": {"micro_batch_size": m} for m in micros})
        settings[f"micro_{micros[0]}_checkpointing"] = {"micro_batch_size": micros[0], "checkpointing": True}
        result["steps"] = {}
        for name, s in settings.items():
            learner.cfg.micro_batch_size = s["micro_batch_size"]
            if s.get("checkpointing"):
                learner.model.gradient_checkpointing_enable(
                    gradient_checkpointing_kwargs={"use_reentrant": False}
                )
            try:
                result["steps"][name] = step_figures(learner, table, args.repeats, measured)
            except torch.OutOfMemoryError as e:
                result["steps"][name] = {"error": f"out of memory: {str(e)[:200]}"}
                learner.opt.zero_grad(set_to_none=True)
                torch.cuda.empty_cache()
            save()
        del learner
        if device.type == "cuda":
            torch.cuda.empty_cache()
        # LoRA (rank 16 on every linear layer): the optimiser holds the adapters' state alone;
        # optimiser offload: AdamW's moments (and fp32 copies of the weights) in host memory
        others = {
            "lora_r16": ["learner.lora_rank=16"],
            f"micro_{micros[0]}_offload": [
                f"learner.micro_batch_size={micros[0]}",
                "learner.optimizer_offload=true",
            ],
        }
        for name, extra in others.items():
            other = learner_for(model_dir, base + extra)
            if name == "lora_r16":
                result["lora_trainable_parameters"] = sum(
                    p.numel() for p in other.model.parameters() if p.requires_grad
                )
            try:
                result["steps"][name] = step_figures(other, table, args.repeats, measured)
            except torch.OutOfMemoryError as e:
                result["steps"][name] = {"error": f"out of memory: {str(e)[:200]}"}
            save()
            del other
            if device.type == "cuda":
                torch.cuda.empty_cache()

        if args.no_checks:
            print(json.dumps(result, indent=1))
            return result
        # 2. gradient accumulation: the micro-batches' gradient against the one-pass one (fp32)
        learner = learner_for(model_dir, base + ["learner.bf16=false", "learner.grad_clip=1e9"])
        learner.set_lr(0.0)  # the weights stay, so both passes see the same model
        baselines = dict(learner.baselines)  # and the same RAE baselines (a step moves them)
        learner.train_step(table)
        whole = flat_grad(learner)
        learner.cfg.micro_batch_size = micros[0]
        learner.baselines = baselines
        learner.train_step(table)
        micro = flat_grad(learner)
        result["accumulation_fp32"] = {
            "relative_l2": float((micro - whole).norm() / whole.norm()),
            "max_abs_delta": float((micro - whole).abs().max()),
            "grad_norm": float(whole.norm()),
        }
        save()
        del learner
        if device.type == "cuda":
            torch.cuda.empty_cache()

        # 3. a checkpoint written on the device loads on the CPU
        small = str(create_default_model(Path(tmp) / "small", "25m", args.prompt + args.response + 8))
        on_device = learner_for(small, base + ["learner.kl_coef=0.05"])
        on_device.train_step(synthetic_batch(8, 16, 8, 100, seed=1))
        ckpt = Path(tmp) / "ckpt"
        on_device.save(ckpt)
        on_cpu = learner_for(str(ckpt / "model"), base + ["learner.kl_coef=0.05", "learner.device=cpu"])
        on_cpu.load(ckpt)
        moments = [s["exp_avg"] for s in on_cpu.opt.state_dict()["state"].values()]
        expected = [s["exp_avg"].cpu() for s in on_device.opt.state_dict()["state"].values()]
        result["checkpoint_to_cpu"] = {
            "weights_equal": all(
                torch.equal(a.cpu(), b)
                for a, b in zip(on_device.model.state_dict().values(), on_cpu.model.state_dict().values())
            ),
            "reference_equal": all(
                torch.equal(a.cpu(), b)
                for a, b in zip(on_device.ref.state_dict().values(), on_cpu.ref.state_dict().values())
            ),
            "moments_equal": all(torch.equal(a, b) for a, b in zip(moments, expected))
            and all(m.device.type == "cpu" for m in moments),
            "step": on_cpu.step,
        }
        save()
    print(json.dumps(result, indent=1))
    return result


if __name__ == "__main__":
    main()
