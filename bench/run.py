"""`make bench`: ratios measured side by side in one run (they are not tests). Each
benchmark writes bench/results/NAME.json (with the machine's facts) and the run ends by
writing bench/results/TABLE.md, which README shows; bench/README.md says how each is
measured.

- pipeline: generator pipeline tokens/s vs raw vllm.LLM.generate on the same model and
  the same prompt batches (the pipeline's own engine calls, replayed). Goal >= 0.8x.
- async: async actor-learner (Ray: generator, verifier, buffer, learner) turns/s trained
  vs the synchronous loop of selfplay/loop.py with the same classes. Goal >= 1.5x.
- learner: learner MFU against the bf16 matmul rate measured in the same run
  (bench/learner_mfu.py). Goal >= 30% on the 25m preset.
- buffer: replay buffer insert + sample rows/s vs raw pyarrow (bench/buffer_bench.py).
  Goal >= 0.5x.
- broadcast: learner -> 1, 2, 4 engines vs an in-process state_dict copy, per model size
  (bench/broadcast.py). Goal <= 3x.
- generation: self-play tokens/s with 1, 2 and 4 generators, as a ratio to one
  (bench/generation.py). No goal: it says what bounds generation on this machine.
- trl: GRPO on arithmetic from the same supervised checkpoint, ours vs TRL's GRPOTrainer
  (in .venv-peers): seconds to the same training reward, ours / TRL's (bench/trl_peer.py).
  Goal <= 0.5x.
- rllib: TicTacToe and Kuhn poker self-play, ours (the demo configs) vs RLlib's PPO with an
  MLP on OpenSpiel's observations: seconds to non-loss 0.9 against minimax and to
  exploitability 0.1 (bench/rllib_peer.py). No goal: who is faster, and why.
- make_bench: the minutes all of the above took, one after another (written when the whole
  suite ran). Goal <= 30.

Not in the suite (`--only ceiling`, or `make ceiling`): the demo's TicTacToe learner
trained on perfect (minimax) labels, learner steps to non-loss 0.9 against minimax
(bench/ceiling.py, about 11 minutes). No goal: what bounds the demo.
"""

from __future__ import annotations

import argparse
import dataclasses
import tempfile
import time
from pathlib import Path

from bench import broadcast, buffer_bench, ceiling, generation, learner_mfu, rllib_peer, trl_peer
from bench.suite import figure, machine, table, write, write_table
from selfplay.config import load_config

ROUNDS = 5
# issue 15's figures 1-7, what `make bench` runs and times against its 30 minutes; the
# ceiling is a longer study of the TicTacToe demo, run on its own (`make ceiling`)
SUITE = ("learner", "buffer", "broadcast", "generation", "pipeline", "async", "trl", "rllib")
BENCHMARKS = (*SUITE, "ceiling")


def pipeline_vs_raw(cfg, model_path: str, gen=None) -> dict:
    """Self-play waves through the generator against the same engine calls made directly on
    vLLM (each call's prompts, limits, temperature and legal-move masks as recorded): tokens
    per second, and their ratio. `gen`: a generator already made (default: one on vLLM)."""
    from actors.engine import sampling_params
    from actors.generator import Generator
    from selfplay.league import LEARNER

    if gen is None:
        gen = Generator.from_model(
            "bench", "bench", cfg.games, model_path, cfg.model, cfg.generator, cfg.seed
        )
    engine = gen.engines[LEARNER]
    calls: list[tuple] = []
    generate = engine.generate

    def recording(prompts, max_tokens, temperature, stop=None, allowed=None):
        calls.append((prompts, max_tokens, temperature, stop, allowed))
        return generate(prompts, max_tokens, temperature, stop=stop, allowed=allowed)

    engine.generate = recording
    gen.self_play(cfg.generator.games_per_wave)  # warm-up
    calls.clear()
    tokens0 = gen.counts["tokens"]
    start = time.perf_counter()
    for _ in range(ROUNDS):
        gen.self_play(cfg.generator.games_per_wave)
    pipe_s = time.perf_counter() - start
    pipe_tokens = gen.counts["tokens"] - tokens0

    raw_tokens, start = 0, time.perf_counter()
    for prompts, *settings in calls:
        params = sampling_params(len(prompts), *settings)
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


def sync_loop(cfg, model_path: str, steps: int) -> tuple[float, float]:
    """selfplay/loop.py's iteration, repeated: generate a wave, verify, train on a batch
    from it, broadcast. Turns/s trained, and the share of the time the learner stepped."""
    from selfplay import loop

    parts = loop.build_parts(cfg, model_path)
    loop.iteration(parts, cfg)  # warm-up
    start = time.perf_counter()
    metrics = loop.train(parts, cfg, steps)
    elapsed = time.perf_counter() - start
    parts.generator.close()  # left to interpreter exit, the engine's shutdown hangs for minutes
    return steps * cfg.learner.batch_size / elapsed, sum(m["step_s"] for m in metrics) / elapsed


def async_loop(cfg, run_dir: Path, steps: int) -> tuple[float, float]:
    import ray

    from selfplay.driver import Run, init_ray

    init_ray(cfg, namespace="bench")
    run = Run(cfg, run_dir, None)  # its controller has the generators playing
    ray.get(run.learner.train.remote(1))  # warm-up
    start = time.perf_counter()
    metrics = ray.get(run.learner.train.remote(steps))
    elapsed = time.perf_counter() - start
    ray.get(run.controller.stop_all.remote())
    run.close()
    ray.shutdown()
    return steps * cfg.learner.batch_size / elapsed, sum(m["step_s"] for m in metrics) / elapsed


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--config", default="configs/tictactoe.yaml")
    p.add_argument("--steps", type=int, default=20)
    p.add_argument("--only", default=",".join(SUITE), help=f"a subset of {','.join(BENCHMARKS)}")
    args = p.parse_args()
    only = args.only.split(",")
    unknown = sorted(set(only) - set(BENCHMARKS))
    if unknown:
        raise SystemExit(f"--only: no benchmark {unknown}; choose from {','.join(BENCHMARKS)}")
    facts = machine()
    steps = {
        "learner": lambda: learner_mfu.main([]),
        "buffer": lambda: buffer_bench.main([]),
        "broadcast": lambda: broadcast.main([]),
        "generation": lambda: generation.main([]),
        "pipeline,async": lambda: engines(args, only, facts),
        "trl": lambda: trl_peer.main([]),
        "rllib": lambda: rllib_peer.main([]),
        "ceiling": lambda: ceiling.main([]),
    }
    seconds = {}
    for names, run in steps.items():
        if set(names.split(",")) & set(only):
            start = time.perf_counter()
            run()
            seconds[names] = time.perf_counter() - start
    if set(SUITE) <= set(only):
        suite = sum(s for names, s in seconds.items() if set(names.split(",")) <= set(SUITE))
        note = ", ".join(f"{names} {s / 60:.1f}" for names, s in seconds.items())
        write("make_bench", {"minutes": figure(suite / 60, "<= 30", note=note)}, facts, seconds=seconds)
    print()
    print(table())
    print(f"written: {write_table()}")


def engines(args, only: list[str], facts: dict) -> None:
    """The benchmarks that start vLLM engines (and Ray), on one initial model."""
    with tempfile.TemporaryDirectory() as tmp:
        cfg = load_config(args.config, [f"out_dir={tmp}"])
        # The sync loop trains each batch right after generating it; give both loops the
        # same data rules: on-policy-ish samples, at most max_staleness versions old.
        cfg = dataclasses.replace(
            cfg, buffer=dataclasses.replace(cfg.buffer, min_size=cfg.learner.batch_size)
        )
        from selfplay.driver import initial_model

        model_path = initial_model(cfg, Path(tmp))
        if "pipeline" in only:
            gen = pipeline_vs_raw(cfg, model_path)
            note = (
                f"{gen['pipeline_tokens_per_s']:,.0f} vs {gen['raw_tokens_per_s']:,.0f} tokens/s, "
                f"{gen['engine_calls']} engine calls"
            )
            write(
                "pipeline",
                {"pipeline_vs_raw_generate": figure(gen["ratio"], ">= 0.8", note=note)},
                facts,
                **gen,
            )
        if "async" in only:
            sync, sync_busy = sync_loop(cfg, model_path, args.steps)
            run_dir = Path(tmp) / "async"
            run_dir.mkdir()
            asyn, async_busy = async_loop(cfg, run_dir, args.steps)
            note = f"{asyn:,.0f} vs {sync:,.0f} turns/s; learner busy {async_busy:.0%} vs {sync_busy:.0%}"
            write(
                "async",
                {"async_vs_sync_loop": figure(asyn / sync, ">= 1.5", note=note)},
                facts,
                steps=args.steps,
                async_turns_per_s=asyn,
                sync_turns_per_s=sync,
                learner_busy={"async": async_busy, "sync": sync_busy},
                config=args.config,
            )


if __name__ == "__main__":
    main()
