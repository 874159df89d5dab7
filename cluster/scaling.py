"""The cost model (selfplay/costmodel.py) checked against this machine and applied to GPU
clusters: prints the tables of cluster/SCALING.md.

    python -m cluster.scaling

The check reads the per-part rates `make bench` measured (bench/results/: one engine's
generation, the learner's step, a broadcast) and predicts what the async benchmark and the
generation benchmark then measured with all parts together. The cluster tables take the
learner's rate measured on an H200 (README, "The learner on a GPU") and the assumptions
named in GPU below."""

from __future__ import annotations

import json
from pathlib import Path

from selfplay.costmodel import Parts, Workload, predict

RESULTS = Path(__file__).resolve().parent.parent / "bench" / "results"

# Assumed for an H100/H200-class GPU node (8 GPUs, 25-100 Gb/s between nodes), one engine
# per GPU (tensor_parallel_size 1), the learner on one node of 8 ranks.
GPU = {
    # the 500m preset's learner, measured on one H200 (one pass, 22% MFU): 76.7k tokens/s;
    # 7B at the same MFU: 76.7k x 0.476 / 7.0
    "learner_tokens_per_s": {"0.5B": 76_700, "7B": 76_700 * 0.476 / 7.0},
    # reply tokens/s of one vLLM engine at large batch: ~12.5k for Llama-3.1-8B BF16 on one
    # H100 (published third-party vLLM figures); 0.5B assumed ~3x that (decode of small
    # models is bound by batch scheduling as much as by memory bandwidth)
    "gen_tokens_per_s": {"0.5B": 40_000, "7B": 12_500},
    "params": {"0.5B": 0.5e9, "7B": 7.0e9},
    "dp_efficiency": 0.9,
    # the collective path as built (gloo over TCP; NCCL is untested): 2.5 GB/s from the
    # learner, all engines at once; plus SHA-256 of the weights on the learner and on each
    # engine (in parallel), at the 1.34 GB/s measured here (one `state_checksum` of a 100M bf16
    # model, 0.196 GB in 0.146 s, 2026-12-02; the fp32-copy checksum before it: 0.49 GB/s)
    "collective_gb_per_s": 2.5,
    "hash_gb_per_s": 1.34,
}
# configs/cluster.yaml: 256 rows a step of ~200 prompt tokens and 8 reply tokens, waves of
# 512 games (~3 learner rows each), 1024 rows ahead at most
CLUSTER = Workload(batch_rows=256, row_tokens=208, reply_tokens=8, wave_rows=1536, ahead_rows=1024)


def measured_here() -> dict:
    """This machine's per-part rates and the figures to check, from bench/results/."""

    def load(name: str) -> dict:
        return json.loads((RESULTS / f"{name}.json").read_text())

    mfu, gen, cast, asyn = load("learner_mfu"), load("generation"), load("broadcast"), load("async")
    batch = mfu["batch"]
    one = cast["runs"]["1m"]
    return {
        "parts": Parts(
            gen_tokens_per_s=gen["runs"]["1"]["tokens_per_s"],  # one engine alone, 1 token a turn
            learner_tokens_per_s=mfu["runs"]["1m"]["tokens_per_s"],
            broadcast_s=one["broadcast_1_s"],
            broadcast_s_per_engine=(one["broadcast_4_s"] - one["broadcast_1_s"]) / 3,
            max_busy_engines=2,  # 2 cores, an engine busy on one
        ),
        "work": Workload(
            batch_rows=batch["turns"],
            row_tokens=batch["prompt"] + batch["response"],
            reply_tokens=batch["response"],
            wave_rows=570,  # configs/tictactoe.yaml's 64 games a wave
            ahead_rows=1024,  # its buffer.spi_tolerance
        ),
        "async_rows_per_s": asyn["async_turns_per_s"],
        "generation": {int(k): v["tokens_per_s"] for k, v in gen["runs"].items()},
    }


def check_here() -> list[str]:
    m = measured_here()
    parts, work = m["parts"], m["work"]
    together = predict(parts, work, engines=1, shared_cores=True)
    apart = predict(parts, work, engines=1)
    lines = [
        "| on this machine (2 cores) | predicted | measured | predicted / measured |",
        "| --- | --- | --- | --- |",
        f"| async run, 1 engine + learner, turns/s (shared cores) | {together['rows_per_s']:,.0f} | "
        f"{m['async_rows_per_s']:,.0f} | {together['rows_per_s'] / m['async_rows_per_s']:.2f} |",
        f"| the same if each part had cores of its own ({apart['bound']} bound) | "
        f"{apart['rows_per_s']:,.0f} | - | - |",
    ]
    for n, measured in sorted(m["generation"].items()):
        predicted = min(n, parts.max_busy_engines) * parts.gen_tokens_per_s
        lines.append(
            f"| generation alone, {n} engine(s), tokens/s | {predicted:,.0f} | {measured:,.0f} | "
            f"{predicted / measured:.2f} |"
        )
    return lines


def cluster_parts(model: str, hashing: bool = True) -> Parts:
    """An engine GPU's and the learner node's rates for `model`, with the collective
    broadcast (its checksums, SHA-256 on each side, included unless `hashing` is False)."""
    gb = 2 * GPU["params"][model] / 1e9  # bf16 weights
    hash_s = 2 * gb / GPU["hash_gb_per_s"] if hashing else 0.0
    return Parts(
        gen_tokens_per_s=GPU["gen_tokens_per_s"][model],
        learner_tokens_per_s=GPU["learner_tokens_per_s"][model],
        broadcast_s=gb / GPU["collective_gb_per_s"] + hash_s,
        dp_efficiency=GPU["dp_efficiency"],
    )


# a task with long replies: 256 prompt tokens and 1,024 reply tokens a row, waves of 8
# prompts x 8 samples
REASONING = Workload(batch_rows=256, row_tokens=1280, reply_tokens=1024, wave_rows=64, ahead_rows=1024)

# (title, workload, broadcast_every, rows a step per engine (None: the workload's), checksums)
SCENARIOS = (
    ("configs/cluster.yaml as shipped: 256 rows a step, a broadcast every step", CLUSTER, 1, None, True),
    ("64 rows a step per engine, a broadcast every 4 steps", CLUSTER, 4, 64, True),
    (
        "the same without the SHA-256 checksums, and waves of 64 games (~192 rows)",
        Workload(**{**CLUSTER.__dict__, "wave_rows": 192}),
        4,
        64,
        False,
    ),
    (
        "long replies (1,024 tokens), 64 rows a step per engine, every 4 steps, no checksums",
        REASONING,
        4,
        64,
        False,
    ),
)


def cluster_table(
    workload: Workload, broadcast_every: int, batch_per_engine: int | None, hashing: bool
) -> list[str]:
    """The run on 8 learner GPUs (one node) and 8-512 engine GPUs."""
    lines = [
        "| model | engines | rows a step | step: train + broadcast share | rows/s | bound | engines busy | staleness (steps) |",
        "| --- | --- | --- | --- | --- | --- | --- | --- |",
    ]
    for model in ("0.5B", "7B"):
        parts = cluster_parts(model, hashing)
        for engines in (8, 64, 512):
            batch = workload.batch_rows if batch_per_engine is None else batch_per_engine * engines
            work = Workload(**{**workload.__dict__, "batch_rows": batch, "broadcast_every": broadcast_every})
            p = predict(parts, work, engines=engines, ranks=8)
            share = parts.broadcast_s / broadcast_every
            lines.append(
                f"| {model} | {engines} | {batch:,} | {p['step_s'] - share:.2f} + {share:.2f} s | "
                f"{p['rows_per_s']:,.0f} | {p['bound']} | {p['busy']['generation']:.0%} | {p['staleness']:.1f} |"
            )
    return lines


def main() -> None:
    print("\n".join(check_here()))
    for title, *scenario in SCENARIOS:
        print(f"\n{title}:\n")
        print("\n".join(cluster_table(*scenario)))


if __name__ == "__main__":
    main()
