"""Generator pool math: which generators to add or remove, the autoscale rule, and the
placement of a tensor-parallel generator. Pure functions; actors/controller.py acts on them."""

from __future__ import annotations

import itertools

from selfplay.config import AutoscaleConfig, GeneratorConfig

EVAL_GENERATOR = "generator-0"  # evaluations run here, so the pool never removes it


def generator_name(index: int) -> str:
    return f"generator-{index}"


def pool_plan(live: list[str], target: int) -> tuple[list[str], list[str]]:
    """(names to start, names to stop) to bring `live` to `target` generators, generator-0
    among them: it never stops, and a pool without it (it failed, its replacement not yet
    up) starts it again whatever the size asked for, stopping another in its place. New
    ones take the lowest free indices; the highest indices stop first."""
    if target < 1:
        raise ValueError(f"a run needs at least one generator, asked for {target}")
    others = sorted((n for n in live if n != EVAL_GENERATOR), key=lambda name: int(name.rsplit("-", 1)[1]))
    kept, stop = others[: target - 1], others[target - 1 :]
    start = [] if EVAL_GENERATOR in live else [EVAL_GENERATOR]
    free = (generator_name(i) for i in itertools.count(1) if generator_name(i) not in live)
    start += itertools.islice(free, target - 1 - len(kept))
    return start, stop


def autoscale_target(current: int, learner_idle: float, generator_idle: float, cfg: AutoscaleConfig) -> int:
    """One step of the autoscale rule. `learner_idle`: share of the last interval the learner
    waited for data (too few generators); `generator_idle`: mean share the generators were
    held back by the buffer's rate limit (too many). Grow first: a starved learner is the
    costlier waste. The result stays within [min_generators, max_generators]."""
    if learner_idle > cfg.learner_idle_high:
        target = current + 1
    elif generator_idle > cfg.generator_idle_high:
        target = current - 1
    else:
        target = current
    return max(cfg.min_generators, min(cfg.max_generators, target))


def idle_shares(
    before: tuple[float, float, float], after: tuple[float, float, float], generators: int
) -> tuple[float, float]:
    """(learner idle share, mean generator idle share) over the interval between two
    samples of (time, learner's cumulative wait for data, generators' cumulative wait on
    the rate limit, retired generators included), each clamped to [0, 1]."""
    dt = after[0] - before[0]
    if dt <= 0:
        return 0.0, 0.0
    learner = (after[1] - before[1]) / dt
    generator = (after[2] - before[2]) / dt / max(generators, 1)
    return min(max(learner, 0.0), 1.0), min(max(generator, 0.0), 1.0)


def generator_bundles(cfg: GeneratorConfig) -> list[dict[str, float]]:
    """Placement-group bundles of one tensor-parallel generator: one per engine worker,
    each with its GPU and share of the CPUs; the custom resources (what a cluster
    autoscaler acts on) go in the first bundle, where the generator actor itself sits."""
    tp = cfg.tensor_parallel_size
    bundles = [{"CPU": cfg.num_cpus / tp, "GPU": cfg.num_gpus} for _ in range(tp)]
    bundles[0].update(cfg.resources)
    return [{k: v for k, v in b.items() if v > 0} for b in bundles]
