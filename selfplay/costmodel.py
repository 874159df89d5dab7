"""A cost model of a run: its throughput, the part that bounds it, how busy each part is
and how stale its samples are, from per-part rates each measured alone (`make bench` on
this machine; cluster/SCALING.md gives the rates it assumes for GPU clusters). Pure
functions; cluster/SCALING.md applies them to 8-512 generator GPUs and checks them against
what this machine measures.

Rows are what the learner trains on (a turn, a task sample): each has `row_tokens`
trained tokens (prompt and reply) and `reply_tokens` generated ones. The parts:

- generation: `gen_tokens_per_s` reply tokens per second of one engine, alone;
- learner: `learner_tokens_per_s` trained tokens per second of one rank, alone; N ranks
  (data parallel) give N x `dp_efficiency` of it (1 for one rank);
- broadcast: `broadcast_s` per version to one engine, plus `broadcast_s_per_engine` for
  each further engine (the object-store path pays per engine; a collective about none);
  the learner waits for it every `broadcast_every` steps;
- verifier and buffer: `verifier_rows_per_s`, `buffer_rows_per_s` (one actor each).

Where engines and learner run on separate devices the run goes as fast as its slowest
part. Where they share the same cores (this machine: 2 cores for everything), their work
adds up instead: each row costs 1/generation + 1/learner seconds of the shared cores
(`shared_cores=True`)."""

from __future__ import annotations

from dataclasses import dataclass


@dataclass(frozen=True)
class Parts:
    """Per-part rates, each measured alone."""

    gen_tokens_per_s: float  # one engine
    learner_tokens_per_s: float  # one learner rank
    broadcast_s: float = 0.0  # one version to one engine
    broadcast_s_per_engine: float = 0.0  # each further engine
    verifier_rows_per_s: float = float("inf")
    buffer_rows_per_s: float = float("inf")
    dp_efficiency: float = 0.9  # of each learner rank past the first
    max_busy_engines: float | None = None  # engines past this many add nothing (the cores they share)


@dataclass(frozen=True)
class Workload:
    batch_rows: int  # rows per learner step
    row_tokens: float  # trained tokens per row
    reply_tokens: float  # generated tokens per row
    wave_rows: int  # rows one generator produces per wave
    broadcast_every: int = 1
    ahead_rows: int = 0  # rows generators may run ahead of the learner (buffer.spi_tolerance)


def learner_step_s(parts: Parts, work: Workload, ranks: int, engines: int) -> float:
    """Seconds of one learner step, its share of a broadcast included."""
    rate = parts.learner_tokens_per_s * (1 + (ranks - 1) * parts.dp_efficiency)
    broadcast = parts.broadcast_s + max(engines - 1, 0) * parts.broadcast_s_per_engine
    return work.batch_rows * work.row_tokens / rate + broadcast / work.broadcast_every


def predict(parts: Parts, work: Workload, engines: int, ranks: int = 1, shared_cores: bool = False) -> dict:
    """Rows/s of the run, the part that bounds it, each part's capacity (rows/s it would
    take alone) and busy share, and the mean staleness of a trained row in learner steps
    (versions): its age when trained over the time between steps."""
    if engines < 1 or ranks < 1:
        raise ValueError(f"a run needs an engine and a learner rank (got {engines}, {ranks})")
    busy_engines = engines if parts.max_busy_engines is None else min(engines, parts.max_busy_engines)
    step_s = learner_step_s(parts, work, ranks, engines)
    capacity = {
        "generation": busy_engines * parts.gen_tokens_per_s / work.reply_tokens,
        "learner": work.batch_rows / step_s,
        "verifier": parts.verifier_rows_per_s,
        "buffer": parts.buffer_rows_per_s,
    }
    if shared_cores:  # generation and learning take turns on the same cores: their work adds
        both = 1 / (1 / capacity["generation"] + 1 / capacity["learner"])
        rows_per_s = min(both, capacity["verifier"], capacity["buffer"])
        bound = "shared cores" if rows_per_s == both else min(capacity, key=capacity.get)
    else:
        bound = min(capacity, key=capacity.get)
        rows_per_s = capacity[bound]
    interval = work.batch_rows / rows_per_s  # seconds between learner steps
    # A row's age when trained: half a wave (its turn was sampled, on average, half a wave
    # before the wave was handed on) and, unless generation is the bound, half of what the
    # generators may hold ahead of the learner (the buffer's window plus the wave each has
    # under way). An engine on cores of its own plays a wave at its own speed, then waits
    # (more engines than max_busy_engines share those engines' speed); on shared cores it
    # plays all the time, at the run's pace.
    engine_rows_per_s = rows_per_s / engines if shared_cores else capacity["generation"] / engines
    wave_s = work.wave_rows / engine_rows_per_s
    ahead = 0 if bound == "generation" else work.ahead_rows + engines * work.wave_rows
    return {
        "rows_per_s": rows_per_s,
        "bound": bound,
        "capacity": capacity,
        "busy": {k: min(rows_per_s / v, 1.0) for k, v in capacity.items() if v != float("inf")},
        "step_s": step_s,
        "staleness": (wave_s + ahead / rows_per_s) / 2 / interval,
    }
