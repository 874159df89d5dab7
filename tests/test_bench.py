"""`make bench`'s shared parts and the benchmarks that need no engine, run small (the broadcast on one engine of its own): what they
write is what README's table reads. (The figures themselves are measured by `make bench`,
never asserted here: a timed test would fail on a busy machine, not on a slow change.)"""

from __future__ import annotations

import dataclasses
import json
import math
import random
import statistics
from pathlib import Path

import pytest

from bench import buffer_bench, gpu_learner, learner_mfu, rllib_peer, trl_grpo, trl_peer, variance_filter
from bench.suite import figure, machine, table, write, write_table
from learner.peak import matmul_flops


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


def test_the_synthetic_batch_has_the_tokens_the_flops_count():
    """23 prompt tokens and the demo's 1-token move: 24 a row, what learner_mfu counts (the
    reply was 2 tokens, 25 a row: MFU read 4% low)."""
    from learner.learner import collate

    rows = gpu_learner.synthetic_batch(4, 23, 1, 100, seed=0).to_pylist()
    assert all(
        (len(r["prompt_ids"]), len(r["response_ids"]), len(r["behaviour_logprobs"])) == (23, 1, 1)
        for r in rows
    )
    assert collate(rows, 0)["attention_mask"].sum().item() == 4 * 24


def test_learner_mfu_benchmark_writes_its_figures(tmp_path):
    figures = learner_mfu.main(
        ["--presets", "1m", "--turns", "16", "--threads", "1", "--compiled", "", "--results", str(tmp_path)]
    )
    doc = json.loads((tmp_path / "learner_mfu.json").read_text())
    assert 0 < figures["mfu_1m"]["value"] < 1 and figures["mfu_1m"]["goal"] is None
    run = doc["runs"]["1m"]
    assert run["flops_per_step"] == 6 * (run["parameters"] - 128 * 128) * 16 * 24  # non-embedding params
    assert doc["matmul_flops"] > 0 and doc["threads"] == 1
    assert run["flash_attention_step_s"] > 0  # 24 tokens: the math kernel, flash timed beside it
    assert run["compiled_step_s"] is None and "compiled_speedup_1m" not in figures  # not asked


@pytest.mark.parametrize(
    ("step_s", "warm_up", "calls"),
    [(5.0, True, 4), (12.0, True, 2), (12.0, False, 1), (25.0, True, 2), (8.0, False, 2), (10.0, False, 2)],
)
def test_the_mfu_timer_takes_fewer_repeats_where_they_would_outrun_its_budget(
    monkeypatch, step_s, warm_up, calls
):
    clock = [0.0]
    monkeypatch.setattr(learner_mfu.time, "perf_counter", lambda: clock[0])
    ran = []

    def step():
        ran.append(clock[0])
        clock[0] += step_s

    # 3 repeats while their sum and one more stay within 20 s: 5 s three times, 12 s once, 8 s
    # twice, 10 s twice (10 + 10 lands on the budget: within it)
    assert learner_mfu.median_s(step, repeats=3, budget_s=20.0, warm_up=warm_up) == step_s
    assert len(ran) == calls


@pytest.mark.parametrize("advantage", ["gae", "rae"])
def test_the_gpu_learner_bench_runs_on_cpu(tmp_path, advantage):
    result = gpu_learner.main(
        "--preset 1m --batch 8 --micro 4 --prompt 8 --response 4 --repeats 1".split()
        + ["--advantage", advantage, "--out", str(tmp_path)]
    )
    assert result["picked_device"] == "cpu" and result["matmul_tflops"] > 0
    assert set(result["steps"]) == {
        "one_pass",
        "micro_4",
        "micro_4_checkpointing",
        "lora_r16",
        "micro_4_offload",
    }
    assert result["steps"]["micro_4_offload"]["micro_batches"] == 2
    assert 0 < result["lora_trainable_parameters"] < result["parameters"] / 4
    assert result["steps"]["micro_4"]["micro_batches"] == 2
    assert result["accumulation_fp32"]["relative_l2"] < 1e-4
    assert all(result["checkpoint_to_cpu"][k] for k in ("weights_equal", "reference_equal", "moments_equal"))
    assert json.loads((tmp_path / "gpu_learner.json").read_text()) == result


def test_time_to_reward_is_the_first_window_whose_mean_reaches_the_threshold():
    points = [
        {"seconds": float(s), "samples": 128 * s, "reward": r}
        for s, r in enumerate([0.1, 0.3, 0.5, 0.2, 0.6], 1)
    ]
    # windows of 2: 0.2, 0.4, 0.35, 0.4 -> first >= 0.4 ends at the third point
    hit = trl_peer.time_to_reward(points, 0.4, 2)
    assert hit["seconds"] == 3.0 and hit["samples"] == 384 and hit["mean_reward"] == pytest.approx(0.4)
    assert trl_peer.time_to_reward(points, 0.45, 2) is None  # no window of 2 averages 0.45
    assert trl_peer.time_to_reward(points, 0.6, 1)["seconds"] == 5.0
    assert trl_peer.time_to_reward(points[:1], 0.0, 2) is None  # fewer points than the window


def test_our_curve_starts_when_generation_starts():
    rows = [
        {"step": 300, "wall_s": 50.0, "name": "nll", "value": 0.1},
        {"step": 300, "wall_s": 58.0, "name": "eval/arithmetic/held_out/accuracy", "value": 0.2},  # after it
        {"step": 299, "wall_s": 49.0, "name": "batch_reward", "value": 0.9},  # no: a supervised step
        {"step": 305, "wall_s": 60.0, "name": "batch_reward", "value": 0.25},
        {"step": 301, "wall_s": 60.0, "name": "batch_reward", "value": 0.125},
        {"step": 305, "wall_s": 60.0, "name": "nll", "value": 0.3},
    ]
    points = trl_peer.our_points(rows, 300, 128)
    assert points == [
        {"step": 301, "seconds": 2.0, "samples": 128, "reward": 0.125},
        {"step": 305, "seconds": 2.0, "samples": 640, "reward": 0.25},
    ]
    assert trl_peer.rate(points) == 320.0


def test_trls_problems_are_the_tasks_train_problems_with_their_references():
    from selfplay.tasks.arithmetic import Arithmetic

    task = Arithmetic(digits=2, terms=2)  # configs/grpo.yaml's
    problems = trl_grpo.problems(50, seed=1)
    assert problems[0] == {"prompt": task.problem(50).prompt, "reference": task.problem(50).reference}
    assert all(task.score(p["prompt"], p["reference"], p["reference"]).total == 1.0 for p in problems)
    held_out = {p.prompt for p in task.held_out(400)}
    assert not held_out & {p["prompt"] for p in trl_grpo.problems(2000, seed=0)}  # train problems only


def metric_rows(
    task: str, evals: list[tuple[int, int, float]], samples: list[tuple[int, float]]
) -> list[dict]:
    """Metrics rows as a run logs them: evaluations (logged step, version, accuracy) and the
    cumulative `task/samples` counter."""
    rows = [{"step": s, "wall_s": 0.0, "name": "task/samples", "value": n} for s, n in samples]
    for step, version, accuracy in evals:
        rows.append(
            {"step": step, "wall_s": 0.0, "name": f"eval/{task}/held_out/accuracy", "value": accuracy}
        )
        rows.append({"step": step, "wall_s": 0.0, "name": f"eval/{task}/held_out/version", "value": version})
    return rows


def test_samples_to_reach_reads_the_version_measured_not_the_step_logged():
    samples = [(305, 1000.0), (310, 2000.0), (350, 9000.0), (400, 20000.0), (410, 21000.0)]
    # the supervised stage's evaluation (version 300) already reaches 0.2: it does not count;
    # the evaluation logged at 410 measured version 350, made when 9,000 samples were drawn
    rows = metric_rows("arithmetic", [(300, 300, 0.2), (355, 352, 0.19), (410, 350, 0.25)], samples)
    got = variance_filter.samples_to_reach(rows, "arithmetic", 0.25, start=300)
    assert got == {"reached": True, "version": 350, "accuracy": 0.25, "samples": 9000.0}
    # ...and the supervised stage's 0.2 does not reach a 0.2 target: a later version does
    assert variance_filter.samples_to_reach(rows, "arithmetic", 0.2, start=300)["version"] == 350
    missed = variance_filter.samples_to_reach(rows, "arithmetic", 0.3, start=300)
    assert missed == {"reached": False, "version": None, "accuracy": 0.25, "samples": 21000.0}
    # the best accuracy of a run that missed is its RL stage's, not the supervised stage's
    rows = metric_rows("arithmetic", [(300, 300, 0.3), (310, 310, 0.2)], samples)
    assert variance_filter.samples_to_reach(rows, "arithmetic", 0.35, start=300)["accuracy"] == 0.2


def test_an_accuracy_landing_on_a_summed_target_reaches_it():
    # the supervised stage's 0.135 + the 0.07 gain is 0.20500000000000002; 82/400 = 0.205
    rows = metric_rows("arithmetic", [(310, 310, 82 / 400)], [(310, 1000.0)])
    got = variance_filter.samples_to_reach(rows, "arithmetic", 0.135 + 0.07, start=300)
    assert got["reached"] and got["version"] == 310


def test_samples_to_reach_confirmed_needs_the_next_evaluation_too():
    samples = [(310, 1000.0), (320, 2000.0), (330, 3000.0), (340, 4000.0), (350, 5000.0)]
    # 310 crosses by chance and 320 falls back; 330 crosses and 340 holds; 350, the run's last
    # evaluation, reaches it with no later one to confirm it
    evals = [(310, 310, 0.26), (320, 320, 0.24), (330, 330, 0.25), (340, 340, 0.27), (350, 350, 0.3)]
    rows = metric_rows("arithmetic", evals, samples)
    first = variance_filter.samples_to_reach(rows, "arithmetic", 0.25, start=300)
    assert (first["version"], first["samples"]) == (310, 1000.0)
    confirmed = variance_filter.samples_to_reach(rows, "arithmetic", 0.25, start=300, confirm=2)
    assert (confirmed["version"], confirmed["samples"]) == (330, 3000.0)
    # only the last evaluation reaches 0.28: nothing after it contradicts it
    assert variance_filter.samples_to_reach(rows, "arithmetic", 0.28, start=300, confirm=2)["version"] == 350


def test_samples_to_fit_reads_the_fitted_curve_not_one_lucky_evaluation():
    samples = [(310, 1000.0), (320, 2000.0), (330, 3000.0), (340, 4000.0), (350, 5000.0), (360, 6000.0)]
    # version 310 reads 0.30 by chance; the next two fall back, so the fit pools the three
    # (0.24): the fitted curve reaches 0.25 half-way from version 330 (3,000 samples, 0.24)
    # to 340 (4,000, 0.26). The evaluation logged at 360 measured version 350 (5,000 samples)
    evals = [(310, 310, 0.30), (320, 320, 0.22), (330, 330, 0.20), (340, 340, 0.26), (360, 350, 0.28)]
    rows = metric_rows("arithmetic", [(300, 300, 0.2), *evals], samples)
    first = variance_filter.samples_to_reach(rows, "arithmetic", 0.25, start=300)
    assert (first["version"], first["samples"]) == (310, 1000.0)
    fitted = variance_filter.samples_to_fit(rows, "arithmetic", 0.25, start=300, after_sft=0.2)
    assert fitted["reached"] and fitted["version"] == 340
    assert fitted["samples"] == pytest.approx(3500.0) and fitted["accuracy"] == pytest.approx(0.26)
    # between version 340 (0.26, 4,000 samples) and 350 (0.28, 5,000)
    later = variance_filter.samples_to_fit(rows, "arithmetic", 0.27, start=300, after_sft=0.2)
    assert later["version"] == 350 and later["samples"] == pytest.approx(4500.0)
    # a first evaluation past the target is reached between the supervised stage and it
    early = variance_filter.samples_to_fit(rows, "arithmetic", 0.21, start=300, after_sft=0.2)
    assert early["version"] == 310 and early["samples"] == pytest.approx(1000.0 * 0.01 / 0.04)
    missed = variance_filter.samples_to_fit(rows, "arithmetic", 0.3, start=300, after_sft=0.2)
    assert missed == {"reached": False, "version": None, "accuracy": pytest.approx(0.28), "samples": 6000.0}


def test_the_plain_arms_final_fitted_accuracy_is_the_mean_of_its_last_pooled_evaluations():
    samples = [(310, 1000.0), (320, 2000.0), (330, 3000.0), (340, 4000.0)]
    # 0.30 at version 320 is pooled with the fall back to 0.28 and 0.27 after it: the fit ends
    # at their mean, 0.85 / 3, not at the last evaluation (0.27) nor the best (0.30); the plain
    # arm's own fitted curve first reaches it at version 320 (2,000 samples)
    evals = [(310, 310, 0.24), (320, 320, 0.30), (330, 330, 0.28), (340, 340, 0.27)]
    rows = metric_rows("arithmetic", [(300, 300, 0.2), *evals], samples)
    final = variance_filter.final_fitted(rows, "arithmetic", start=300, after_sft=0.2)
    assert final == pytest.approx(0.85 / 3)
    own = variance_filter.samples_to_fit(rows, "arithmetic", final, start=300, after_sft=0.2)
    assert own["version"] == 320 and own["samples"] == pytest.approx(2000.0)
    # a run whose last evaluation is its best ends at it
    rows = metric_rows("arithmetic", [(310, 310, 0.24), (320, 320, 0.22), (330, 330, 0.3)], samples)
    assert variance_filter.final_fitted(rows, "arithmetic", start=300, after_sft=0.2) == pytest.approx(0.3)
    # one that never rose ends at the supervised stage's accuracy, pooled with it
    rows = metric_rows("arithmetic", [(310, 310, 0.18), (320, 320, 0.16)], samples)
    assert variance_filter.final_fitted(rows, "arithmetic", start=300, after_sft=0.2) == pytest.approx(0.18)


def simulated_run(efficiency: float, every: float, total: float, rng) -> list[dict]:
    """Metrics rows of a run whose true held-out accuracy after s samples is 0.16 + 0.25
    (1 - exp(-s efficiency / 250k)), evaluated every `every` samples to `total` with the
    noise of 400 problems (sd 0.022)."""
    points = [every * i for i in range(1, int(total / every) + 1)]
    evals = [
        (300 + i, 300 + i, 0.16 + 0.25 * (1 - math.exp(-s * efficiency / 250e3)) + rng.gauss(0, 0.022))
        for i, s in enumerate(points, 1)
    ]
    return metric_rows("arithmetic", evals, [(300 + i, s) for i, s in enumerate(points, 1)])


@pytest.mark.parametrize("efficiency, lo, hi", [(1.0, 0.83, 0.91), (1.3, 1.08, 1.17), (2.0, 1.65, 1.8)])
def test_the_reading_at_the_plain_arms_final_accuracy_errs_against_the_filter(efficiency, lo, hi):
    # the plain arm evaluated every 1,300 samples to 330k, the filter every 8,000 to 800k (as
    # the runs of 2026-12-07): under noise independent between evaluations, a filter no better
    # per sample reads below 1, one 1.3x better below 1.3, one twice as good below 2 (the
    # target is the plain arm's noise-lifted end, which its own curve reaches by construction)
    rng = random.Random(0)
    ratios = []
    for _ in range(300):
        plain, other = simulated_run(1.0, 1300, 330e3, rng), simulated_run(efficiency, 8000, 800e3, rng)
        target = variance_filter.final_fitted(plain, "arithmetic", start=300, after_sft=0.16)
        ratios.append(
            variance_filter.saving(
                variance_filter.samples_to_fit(plain, "arithmetic", target, start=300, after_sft=0.16),
                variance_filter.samples_to_fit(other, "arithmetic", target, start=300, after_sft=0.16),
            )["ratio"]
        )
    assert lo < statistics.fmean(ratios) < hi


def test_the_variance_bench_reads_each_seed_at_the_plain_arms_final_accuracy(tmp_path, monkeypatch):
    """measure() on two finished arms: the goal's accuracy is the plain arm's fitted end, and
    a plain arm that never rose above its supervised stage gives no reading."""
    import pyarrow as pa
    import pyarrow.parquet as pq

    from selfplay.config import load_config, save_config

    def finished(arm: str, evals, samples, final: float) -> Path:
        d = tmp_path / arm
        d.mkdir(exist_ok=True)
        save_config(load_config(variance_filter.ROOT / variance_filter.CONFIG, []), d / "config.yaml")
        held_out = {"arithmetic/held_out": {"accuracy": 0.2}}
        summary = {"after_sft": held_out, "after": {"arithmetic/held_out": {"accuracy": final}}}
        (d / "summary.json").write_text(json.dumps(summary))
        pq.write_table(pa.Table.from_pylist(metric_rows("arithmetic", evals, samples)), d / "metrics.parquet")
        return d

    # plain: 0.26 at 4,000 samples, 0.30 and 0.28 by 8,000 and 12,000 (its fit ends at 0.29,
    # first reached at version 320, 8,000 samples); screen: 0.25 at 2,000, 0.33 at 6,000
    # (0.29 half-way between: 4,000 samples), so 8,000 / 4,000 = 2x
    plain = finished(
        "plain",
        [(310, 310, 0.26), (320, 320, 0.30), (330, 330, 0.28)],
        [(310, 4e3), (320, 8e3), (330, 12e3)],
        0.28,
    )
    screen = finished("screen", [(310, 310, 0.25), (320, 320, 0.33)], [(310, 2e3), (320, 6e3)], 0.33)
    monkeypatch.setattr(
        variance_filter, "run", lambda seed, arm, minutes, evals: {"plain": plain, "screen": screen}[arm]
    )
    got = variance_filter.measure(0, 10, 0.07, ["screen"], [])
    assert got["matched_target"] == pytest.approx(0.29)
    assert got["plain"]["matched"]["samples"] == pytest.approx(8000.0)
    assert got["screen"]["matched"]["samples"] == pytest.approx(4000.0)
    assert got["matched_saving"]["screen"] == {"ratio": pytest.approx(2.0), "kind": "exact"}
    # one problem (1/400) lower, 0.2875: plain 4,000 + 4,000 x 0.0275 / 0.03, screen 2,000 +
    # 4,000 x 0.0375 / 0.08; higher, 0.2925: past the plain arm's fit, so all it generated
    # (12,000) against screen's 2,000 + 4,000 x 0.0425 / 0.08
    lower, higher = got["matched_range"]["screen"]
    assert lower == pytest.approx((4000 + 4000 * 0.0275 / 0.03) / 3875)
    assert higher == pytest.approx(12000 / 4125)
    # the supervised stage + 0.07 = 0.27 beside it: plain at 4,000 + 4,000 / 3, screen at
    # 2,000 + 4,000 x 0.02 / 0.08
    assert got["fitted_saving"]["screen"]["ratio"] == pytest.approx((4000 + 4000 / 3) / 3000)
    # a plain arm that fell below its supervised stage and stayed there: no reading
    finished("plain", [(310, 310, 0.18), (320, 320, 0.19)], [(310, 4e3), (320, 8e3)], 0.19)
    got = variance_filter.measure(0, 10, 0.07, ["screen"], [])
    assert got["matched_saving"]["screen"]["ratio"] is None and got["matched_range"]["screen"] == [None, None]


def test_variance_filter_saving_says_what_kind_of_figure_it_is():
    def arm(reached, samples):
        return {"reached": reached, "samples": samples}

    assert variance_filter.saving(arm(True, 90.0), arm(True, 60.0)) == {"ratio": 1.5, "kind": "exact"}
    # the plain arm never reached it: its total is a floor on what it needed
    assert variance_filter.saving(arm(False, 90.0), arm(True, 30.0)) == {"ratio": 3.0, "kind": "lower bound"}
    assert variance_filter.saving(arm(True, 60.0), arm(False, 120.0)) == {"ratio": 0.5, "kind": "upper bound"}
    assert variance_filter.saving(arm(False, 1.0), arm(False, 1.0))["ratio"] is None


def perfect(state) -> int:
    """Minimax's lowest optimal move on an OpenSpiel tic_tac_toe state (its history: X first)."""
    from bench.ceiling import board_of
    from selfplay.games.tictactoe import best_moves

    return best_moves(*board_of(state.history()))[0]


def test_the_rllib_peers_tictactoe_evaluation_plays_both_seats_and_an_illegal_move_loses():
    assert rllib_peer.tictactoe_vs_minimax(perfect, games=20) == {"non_loss": 1.0, "win": 0.0, "illegal": 0.0}
    corner = rllib_peer.tictactoe_vs_minimax(lambda state: 0, games=20)  # cell 1, again and again
    assert corner["illegal"] == 1.0 and corner["non_loss"] == 0.0
    # RLlib's example's rule: the illegal choice is swapped for a random legal move, the game goes on
    swapped = rllib_peer.tictactoe_vs_minimax(lambda state: 0, games=20, swap_illegal=True)
    assert swapped["illegal"] == 1.0 and swapped["non_loss"] < 1.0
    assert rllib_peer.tictactoe_vs_minimax(perfect, games=20, swap_illegal=True)["non_loss"] == 1.0
    # perfect as X (its moves at even history lengths), cell 1 again and again as O: the
    # seats alternate, so half the games are held and half lost to an illegal move
    half = rllib_peer.tictactoe_vs_minimax(lambda s: perfect(s) if len(s.history()) % 2 == 0 else 0, games=20)
    assert half["illegal"] == 0.5 and half["non_loss"] == 0.5


def test_the_rllib_peers_kuhn_table_covers_every_information_state():
    from selfplay.games import kuhn

    nash = kuhn.nash_policy(0.2)
    table = rllib_peer.kuhn_policy(lambda state: nash[state.information_state_string()])
    assert table == nash and kuhn.exploitability(table) == pytest.approx(0.0, abs=1e-9)
    uniform = rllib_peer.kuhn_policy(lambda state: [0.5, 0.5])
    assert kuhn.exploitability(uniform) == pytest.approx(0.4583, abs=1e-4)


def test_the_rllib_peers_figure_is_the_first_time_the_goal_is_met():
    points = [
        {"seconds": 30.0, "value": 0.95},
        {"seconds": 10.0, "value": 0.5},
        {"seconds": 20.0, "value": 0.9},
    ]
    assert rllib_peer.first_reaching(points, ">= 0.9") == {"seconds": 20.0, "value": 0.9}
    assert rllib_peer.first_reaching(points, "<= 0.1") is None
    assert rllib_peer.outcome(None, points, "<= 0.1", 5) == "not in 5 min (best 0.5)"
    assert rllib_peer.outcome(points[2], points, ">= 0.9", 5) == "20 s"


def test_the_ceilings_labels_are_optimal_and_its_evaluation_reads_the_board():
    import random

    from bench import ceiling
    from selfplay.games.tictactoe import optimal_moves

    assert ceiling.board_of([4, 0, 8]) == ("O...X...X", 1)
    labels = optimal_moves()
    positions = [("X........", 1), ("." * 9, 0)]
    prompts = {p: [1, 2, 3] for p in positions}
    move_ids = [10 + c for c in range(9)]
    rows = ceiling.label_rows(positions, labels, prompts, move_ids, random.Random(0), one=False)
    assert rows[0]["response_ids"] == [14] and rows[0]["response_text"] == "5"  # the centre, the only answer
    assert rows[0]["label"] == "sft" and rows[0]["role"] == 1

    def opening(seed: int, one: bool) -> str:  # the empty board's label
        rows = ceiling.label_rows(positions, labels, prompts, move_ids, random.Random(seed), one)
        return rows[1]["response_text"]

    assert len({opening(s, one=False) for s in range(40)}) > 3  # every opening is optimal: one at random
    assert {opening(s, one=True) for s in range(40)} == {"1"}  # the lowest optimal cell, always
    # a policy that plays the labels never loses to minimax, through the same evaluation
    score = rllib_peer.tictactoe_vs_minimax(lambda s: labels[ceiling.board_of(s.history())][0], games=20)
    assert score["non_loss"] == 1.0 and score["illegal"] == 0.0


def test_the_ceiling_is_the_first_evaluation_to_reach_the_goal_and_the_one_it_holds_from():
    from bench import ceiling

    curve = [
        {"step": s, "non_loss": v} for s, v in [(50, 0.2), (100, 0.92), (150, 0.4), (200, 0.95), (250, 1.0)]
    ]
    first, held = ceiling.reached(curve)
    assert (first["step"], held["step"]) == (100, 200)
    first, held = ceiling.reached(curve[:3])
    assert first["step"] == 100 and held is None
    assert ceiling.reached(curve[:1]) == (None, None)


def test_the_ceiling_benchmark_trains_the_demos_learner_and_writes_its_figures(tmp_path):
    from bench import ceiling

    figures = ceiling.main(
        ["--steps", "2", "--eval-every", "1", "--threads", "1", "--eager", "--results", str(tmp_path)]
    )
    doc = json.loads((tmp_path / "ceiling.json").read_text())
    assert [p["step"] for p in doc["curve"]] == [1, 2]
    assert (doc["preset"], doc["batch"]) == ("500k", 512)  # configs/tictactoe.yaml's
    assert doc["compiled"] is False  # --eager: the demo's learner compiles (tests/test_learner.py)
    assert all(0 < p["nll"] < 10 for p in doc["curve"]) and doc["step_s"] > 0
    assert figures["tictactoe_ceiling_first_step"]["goal"] is None


def test_the_broadcast_benchmark_times_both_paths_to_a_real_engine(ray_session, tiny_model, small_cfg):
    """bench/broadcast.py's measurement of one size, on an engine of its own: both sync
    paths broadcast and are acknowledged (the collective one by its own backend, picked as
    its service starts), and each figure is a ratio to the in-process copy."""
    from bench import broadcast

    cfg = dataclasses.replace(
        small_cfg, generator=dataclasses.replace(small_cfg.generator, cpu_bind="nobind")
    )
    gens = broadcast.idle_generators(cfg, tiny_model, 1)
    try:
        run, figures = broadcast.measure_size(
            cfg, tiny_model, "1m", gens, [1], ["object_store", "collective"]
        )
    finally:
        broadcast.close_generators(gens)
    assert set(figures) == {
        "1m_to_1_engines",
        "1m_to_1_engines_collective",
        "1m_to_1_engines_collective_vs_object_store",
    }
    for path in ("", "_collective"):
        seconds = run[f"broadcast_1{path}_s"]
        assert figures[f"1m_to_1_engines{path}"]["value"] == pytest.approx(seconds / run["state_dict_copy_s"])
    assert small_cfg.learner.weight_sync == "object_store"  # the session's config is not the bench's to set


def test_variance_ratio_figure_is_met_only_where_every_seed_meets_the_goal():
    def seed(ratio, kind="exact"):
        return {"saving": {"filter": {"ratio": ratio, "kind": kind}}}

    # 1.5 and 1.3 meet 1.3; 2.0 is an upper bound (the filter arm never reached it): not met
    seeds = [seed(1.5), seed(1.3), seed(2.0, "upper bound"), seed(None, "neither reached the target")]
    got = variance_filter.ratio_figure(seeds, "filter", "saving", [0, 1, 2, 3], variance_filter.GOAL)
    assert got["mean"] == pytest.approx(1.6)
    # t at 2 degrees of freedom, 4.303; the sample sd of (1.5, 1.3, 2.0) is 0.3606
    assert got["lo"] == pytest.approx(1.6 - 4.303 * 0.36056 / 3**0.5, abs=1e-3)
    assert got["figure"]["met"] is False  # the mean meets 1.3, but 2 seeds of 4 do not
    assert ">= 1.3 in 2/4" in got["figure"]["note"]
    assert got["geomean"] == pytest.approx((1.5 * 1.3 * 2.0) ** (1 / 3))  # 1.5659, below the mean
    every = variance_filter.ratio_figure(
        [seed(1.5), seed(1.3)], "filter", "saving", [0, 1], variance_filter.GOAL
    )
    assert every["figure"]["met"] is True
    below = variance_filter.ratio_figure(
        [seed(1.2), seed(1.2)], "filter", "saving", [0, 1], variance_filter.GOAL
    )
    assert below["figure"]["met"] is False


def test_the_pipeline_bench_replays_each_engine_call_with_its_own_settings():
    """The raw arm makes the pipeline's engine calls directly on vLLM's LLM: the same
    prompts, limits and legal-move masks (the bench's wrapper took no `allowed` and crashed
    at its first wave once the generator passed one; its replay sent no mask)."""
    import types

    from actors.generator import Generator
    from bench.run import pipeline_vs_raw
    from selfplay.config import load_config
    from tests.engines import EngineMaker, RuleEngine

    cfg = load_config(
        None,
        ["generator.legal_moves_only=true", "generator.max_response_tokens=1", "generator.games_per_wave=4"],
    )

    class LLM:  # vLLM's LLM.generate, as the raw arm calls it
        def __init__(self):
            self.params = []

        def generate(self, inputs, params, use_tqdm):
            self.params.append(params)
            return [types.SimpleNamespace(outputs=[types.SimpleNamespace(token_ids=[5])]) for _ in inputs]

    engine = RuleEngine()
    engine.llm = LLM()
    gen = Generator("bench", "bench", {"tictactoe": 1.0}, engine, EngineMaker(), cfg.generator, 0)
    result = pipeline_vs_raw(cfg, "unused", gen=gen)
    piped = engine.calls[-result["engine_calls"] :]  # after the warm-up
    assert result["engine_calls"] == len(engine.llm.params) > 0
    for call, params in zip(piped, engine.llm.params):
        assert [p.allowed_token_ids for p in params] == call["allowed"] and all(call["allowed"])
        assert [p.max_tokens for p in params] == call["max_tokens"]
    assert engine.closed


def test_the_variance_bench_reuses_a_finished_run_only_if_it_ran_as_asked(tmp_path, monkeypatch):
    """A finished arm is read again by a later `make variance`: one of 10 minutes was taken
    for a 30-minute request (and the results file said 30)."""
    from selfplay.config import load_config, save_config
    from selfplay.files import write_atomic

    monkeypatch.setattr(variance_filter, "WORK", tmp_path)
    done = tmp_path / "seed0-plain-eval10"
    done.mkdir()
    sets = [f"out_dir={tmp_path}", "time_limit_min=10", "seed=0", "eval.every_steps=10"]
    save_config(load_config(variance_filter.ROOT / variance_filter.CONFIG, sets), done / "config.yaml")
    write_atomic(done / "summary.json", '{"steps": 900}')
    assert variance_filter.run(0, "plain", 10, ["eval.every_steps=10"]) == done
    with pytest.raises(
        SystemExit, match=r"seed0-plain-eval10: a finished run with other settings \(time_limit_min\)"
    ):
        variance_filter.run(0, "plain", 30, ["eval.every_steps=10"])
