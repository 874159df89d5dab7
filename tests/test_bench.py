"""`make bench`'s shared parts and the benchmarks that need no engine, run small: what they
write is what README's table reads. (The figures themselves are measured by `make bench`,
never asserted here: a timed test would fail on a busy machine, not on a slow change.)"""

from __future__ import annotations

import json

import pytest

from bench import buffer_bench, gpu_learner, learner_mfu
from bench.suite import figure, machine, matmul_flops, table, write, write_table


def test_a_figure_reads_its_goal():
    assert figure(1.6, ">= 1.5")["met"] is True
    assert figure(1.4, ">= 1.5")["met"] is False
    assert figure(2.0, "<= 3", note="ms") == {"value": 2.0, "goal": "<= 3", "met": True, "note": "ms"}
    assert figure(None, ">= 0.5")["met"] is False  # not measured: not met
    assert figure(260.0, None)["met"] is None  # reported, no goal


def test_results_and_table(tmp_path):
    facts = {**machine(), "date": "2026-11-30", "cores": 2}
    write("alpha", {"ratio": figure(0.2, ">= 0.5", note="1 vs 5 rows/s")}, facts, tmp_path, raw=[1, 2])
    write("beta", {"bytes": figure(27.25, None)}, facts, tmp_path)
    doc = json.loads((tmp_path / "alpha.json").read_text())
    assert doc["figures"]["ratio"] == {"value": 0.2, "goal": ">= 0.5", "met": False, "note": "1 vs 5 rows/s"}
    assert doc["raw"] == [1, 2] and doc["machine"]["packages"]["torch"]
    rows = table(tmp_path).splitlines()
    assert rows[2] == "| alpha | ratio (1 vs 5 rows/s) | 0.2 | >= 0.5 | **no** | 2026-11-30, 2 cores |"
    assert rows[3] == "| beta | bytes | 27.2 | - | - | 2026-11-30, 2 cores |"
    assert write_table(tmp_path).read_text() == table(tmp_path)


def test_matmul_rate_is_measured():
    rate = matmul_flops("cpu", n=256)
    assert 1e8 < rate < 1e14


def test_buffer_benchmark_writes_its_figures(tmp_path):
    figures = buffer_bench.main(
        ["--waves", "4", "--games", "64", "--batch", "64", "--results", str(tmp_path)]
    )
    doc = json.loads((tmp_path / "buffer.json").read_text())
    assert doc["figures"] == figures
    assert figures["insert_sample_vs_raw_pyarrow"]["value"] > 0
    assert doc["counts"]["sampled"] >= 64 * doc["batches"] > 0  # whole games: at least 64 turns a batch
    assert 0 < figures["bytes_per_turn_parquet"]["value"] < figures["bytes_per_turn_in_memory"]["value"]


def test_learner_mfu_benchmark_writes_its_figures(tmp_path):
    figures = learner_mfu.main(
        ["--presets", "1m", "--turns", "16", "--threads", "1", "--results", str(tmp_path)]
    )
    doc = json.loads((tmp_path / "learner_mfu.json").read_text())
    assert 0 < figures["mfu_1m"]["value"] < 1 and figures["mfu_1m"]["goal"] is None
    run = doc["runs"]["1m"]
    assert run["flops_per_step"] == 6 * (run["parameters"] - 128 * 128) * 16 * 24  # non-embedding params
    assert doc["bf16_matmul_flops"] > 0 and doc["threads"] == 1


@pytest.mark.parametrize("advantage", ["gae", "rae"])
def test_the_gpu_learner_bench_runs_on_cpu(tmp_path, advantage):
    result = gpu_learner.main(
        "--preset 1m --batch 8 --micro 4 --prompt 8 --response 4 --repeats 1".split()
        + ["--advantage", advantage, "--out", str(tmp_path)]
    )
    assert result["picked_device"] == "cpu" and result["bf16_matmul_tflops"] > 0
    assert set(result["steps"]) == {"one_pass", "micro_4", "micro_4_checkpointing", "lora_r16"}
    assert 0 < result["lora_trainable_parameters"] < result["parameters"] / 4
    assert result["steps"]["micro_4"]["micro_batches"] == 2
    assert result["accumulation_fp32"]["relative_l2"] < 1e-4
    assert all(result["checkpoint_to_cpu"][k] for k in ("weights_equal", "reference_equal", "moments_equal"))
    assert json.loads((tmp_path / "gpu_learner.json").read_text()) == result
