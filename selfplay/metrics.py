"""Run metrics: one long-format Parquet file (step, wall_s, name, value), mirrored to
TensorBoard and to Ray gauges so they show in the Ray dashboard."""

from __future__ import annotations

import math
import re
from collections import Counter
from pathlib import Path

import pyarrow as pa
import pyarrow.parquet as pq

from selfplay.files import write_parquet_atomic

SECONDS = [
    0.001,
    0.005,
    0.01,
    0.05,
    0.1,
    0.25,
    0.5,
    1,
    2,
    5,
    10,
    30,
]  # latency histogram bounds (Ray metrics)


def ray_metric(kind: str, name: str, tags: dict[str, str], extra_keys: tuple[str, ...] = (), **kwargs):
    """A Ray metric `selfplay_NAME` ("counter", "gauge" or "histogram"; histograms take
    `boundaries`) carrying `tags` as its default tags; `extra_keys` are tags given per
    call (e.g. a rejection reason). Every actor makes its metrics here, so the naming and
    the run tag are one rule."""
    from ray.util import metrics

    cls = {"counter": metrics.Counter, "gauge": metrics.Gauge, "histogram": metrics.Histogram}[kind]
    metric = cls(f"selfplay_{name}", tag_keys=(*tags, *extra_keys), **kwargs)
    metric.set_default_tags(tags)
    return metric


METRICS_SCHEMA = pa.schema(
    [("step", pa.int64()), ("wall_s", pa.float64()), ("name", pa.string()), ("value", pa.float64())]
)


class MetricsLog:
    """Every metric of a run by step, kept in RUN_DIR/metrics.parquet (written at each
    checkpoint and at the end), TensorBoard and Ray's gauges. `resumed_at`: the step of the
    checkpoint a run resumes from; rows logged past it by the session that was stopped or
    killed are dropped (those steps are taken again), the rest kept (an evaluation of an
    earlier step that finished after its checkpoint included)."""

    def __init__(self, run_dir: Path, run_id: str, ray_gauges: bool = True, resumed_at: int | None = None):
        from torch.utils.tensorboard import SummaryWriter

        self.path = run_dir / "metrics.parquet"
        self.rows: list[dict] = pq.read_table(self.path).to_pylist() if self.path.exists() else []
        if resumed_at is not None:
            self.rows = [row for row in self.rows if row["step"] <= resumed_at]
        # TensorBoard hides what the earlier session logged past the checkpoint as well
        self.tb = SummaryWriter(
            str(run_dir / "tb"), purge_step=None if resumed_at is None else resumed_at + 1
        )
        self.run_id = run_id
        self.ray_gauges = ray_gauges
        self.gauges: dict = {}
        self.latest: dict[str, float] = {}  # name -> last value, what the Ray gauges show

    def log(self, step: int, wall_s: float, values: dict[str, float]) -> None:
        for name, value in values.items():
            if value is None:
                continue
            value = float(value)
            self.rows.append({"step": step, "wall_s": wall_s, "name": name, "value": value})
            self.tb.add_scalar(name, value, step)
            self.latest[name] = value
        if self.ray_gauges:  # Ray stops exporting a gauge soon after its last set: set them all again
            for name, value in self.latest.items():
                self._gauge(name).set(value)

    def _gauge(self, name: str):
        if name not in self.gauges:
            self.gauges[name] = ray_metric("gauge", re.sub(r"[^a-zA-Z0-9_]", "_", name), {"run": self.run_id})
        return self.gauges[name]

    def last(self, name: str) -> float | None:
        for row in reversed(self.rows):
            if row["name"] == name:
                return row["value"]
        return None

    def flush(self) -> None:
        write_parquet_atomic(pa.Table.from_pylist(self.rows, schema=METRICS_SCHEMA), self.path)
        self.tb.flush()

    def close(self) -> None:
        self.flush()
        self.tb.close()


def distinct_n(texts: list[str], n: int) -> float:
    """Distinct-n (Li et al. 2016): unique character n-grams / all n-grams over `texts`;
    falls towards 0 as responses collapse onto a few strings. 0 when there are none."""
    grams = [t[i : i + n] for t in texts for i in range(len(t) - n + 1)]
    return len(set(grams)) / len(grams) if grams else 0.0


def action_entropy(texts: list[str]) -> float:
    """Entropy (nats) of the empirical distribution of replies: 0 when one reply is all."""
    counts = Counter(texts)
    total = sum(counts.values())
    return -sum(c / total * math.log(c / total) for c in counts.values()) if total else 0.0
