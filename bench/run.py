"""`make bench`: ratios measured side by side in one run (they are not tests).

1. Generator pipeline tokens/s vs raw vllm.LLM.generate on the same model and the same
   prompt batches (the pipeline's own engine calls, replayed). Goal >= 0.8x.
2. Async actor-learner (Ray: generator, verifier, buffer, learner) samples/s vs the
   synchronous loop of selfplay/loop.py with the same classes. Goal >= 1.5x.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

from selfplay.config import load_config

ROUNDS = 5


def pipeline_vs_raw(cfg, model_path: str) -> dict:
    from vllm import SamplingParams

    from actors.generator import Generator
    from selfplay.league import LEARNER

    gen = Generator.from_model("bench", "bench", cfg.games, model_path, cfg.model, cfg.generator, cfg.seed)
    engine = gen.engines[LEARNER]
    calls: list[list[list[int]]] = []
    generate = engine.generate

    def recording(prompts, max_tokens, temperature):
        calls.append(prompts)
        return generate(prompts, max_tokens, temperature)

    engine.generate = recording
    gen.self_play(cfg.generator.games_per_wave)  # warm-up
    calls.clear()
    tokens0 = gen.counts["tokens"]
    start = time.perf_counter()
    for _ in range(ROUNDS):
        gen.self_play(cfg.generator.games_per_wave)
    pipe_s = time.perf_counter() - start
    pipe_tokens = gen.counts["tokens"] - tokens0

    params = SamplingParams(
        max_tokens=cfg.generator.max_response_tokens, temperature=cfg.generator.temperature, logprobs=0
    )
    raw_tokens, start = 0, time.perf_counter()
    for prompts in calls:
        outs = engine.llm.generate([{"prompt_token_ids": p} for p in prompts], params, use_tqdm=False)
        raw_tokens += sum(len(o.outputs[0].token_ids) for o in outs)
    raw_s = time.perf_counter() - start
    result = {
        "pipeline_tokens_per_s": pipe_tokens / pipe_s,
        "raw_tokens_per_s": raw_tokens / raw_s,
        "engine_calls": len(calls),
    }
    result["ratio"] = result["pipeline_tokens_per_s"] / result["raw_tokens_per_s"]
    engine.close()  # left to interpreter exit, the engine's shutdown hangs for minutes
    return result


def sync_loop(cfg, model_path: str, steps: int) -> float:
    """selfplay/loop.py's iteration, repeated: generate a wave, verify, train on a batch
    from it, broadcast. Turns/s trained."""
    from selfplay import loop

    parts = loop.build_parts(cfg, model_path)
    loop.iteration(parts, cfg)  # warm-up
    start = time.perf_counter()
    loop.train(parts, cfg, steps)
    rate = steps * cfg.learner.batch_size / (time.perf_counter() - start)
    parts.generator.close()  # left to interpreter exit, the engine's shutdown hangs for minutes
    return rate


def async_loop(cfg, run_dir: Path, steps: int) -> float:
    import ray

    from selfplay.driver import Run, init_ray

    init_ray(cfg, namespace="bench")
    run = Run(cfg, run_dir, None)  # its controller has the generators playing
    ray.get(run.learner.train.remote(1))  # warm-up
    start = time.perf_counter()
    ray.get(run.learner.train.remote(steps))
    rate = steps * cfg.learner.batch_size / (time.perf_counter() - start)
    ray.get(run.controller.stop_all.remote())
    run.close()
    ray.shutdown()
    return rate


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__)
    p.add_argument("--config", default="configs/tictactoe.yaml")
    p.add_argument("--steps", type=int, default=20)
    args = p.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(args.config, [f"out_dir={tmp}"])
        # The sync loop trains each batch right after generating it; give both loops the
        # same data rules: on-policy-ish samples, at most max_staleness versions old.
        cfg = dataclasses.replace(
            cfg, buffer=dataclasses.replace(cfg.buffer, min_size=cfg.learner.batch_size)
        )
        from selfplay.driver import initial_model

        model_path = initial_model(cfg, Path(tmp))
        gen = pipeline_vs_raw(cfg, model_path)
        sync = sync_loop(cfg, model_path, args.steps)
        run_dir = Path(tmp) / "async"
        run_dir.mkdir()
        asyn = async_loop(cfg, run_dir, args.steps)
    print()
    print("benchmark                               measured            goal")
    print(
        f"generator pipeline vs raw LLM.generate  {gen['ratio']:.2f}x "
        f"({gen['pipeline_tokens_per_s']:.0f} vs {gen['raw_tokens_per_s']:.0f} tok/s, "
        f"{gen['engine_calls']} engine calls)  >= 0.8x"
    )
    print(
        f"async actor-learner vs sync loop        {asyn / sync:.2f}x "
        f"({asyn:.0f} vs {sync:.0f} turns/s trained)  >= 1.5x"
    )


if __name__ == "__main__":
    main()
