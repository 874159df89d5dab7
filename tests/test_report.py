"""The run report: Wilson intervals on hand-worked numbers, the figure list built from the
logged names, and plots + Markdown + HTML written from a small run directory (two games,
Kuhn exploitability, a league with snapshots)."""

from __future__ import annotations

import json
import random

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from selfplay.league import LEARNER, LeagueState, Member
from selfplay.metrics import METRICS_SCHEMA
from selfplay.report import figures, promote_threshold, wilson_interval, write_report
from selfplay.stats import isotonic, mean_by_key, mean_interval, seeds_interval

PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"


def test_wilson_interval_matches_hand_computed_values():
    # 8/10, z=1.96: centre (0.8 + 0.19208) / 1.38416 = 0.71674,
    # half 1.96 * sqrt(0.016 + 0.009604) / 1.38416 = 0.22658
    lo, hi = wilson_interval(8, 10)
    assert lo == pytest.approx(0.4902, abs=1e-4)
    assert hi == pytest.approx(0.9433, abs=1e-4)
    # 0/10: centre == half, so the lower bound is exactly 0; upper 2 * 0.13877
    lo, hi = wilson_interval(0, 10)
    assert lo == 0.0
    assert hi == pytest.approx(0.2775, abs=1e-4)


def test_wilson_interval_with_no_games_is_uninformative():
    assert wilson_interval(0, 0) == (0.0, 1.0)


def test_mean_interval_matches_hand_computed_values():
    # 1, 2, 3, 6: mean 3, s = sqrt((4 + 1 + 0 + 9) / 3) = 2.16025, half 1.96 * s / 2 = 2.11704
    lo, hi = mean_interval([1, 2, 3, 6])
    assert (lo, hi) == (pytest.approx(0.88296, abs=1e-5), pytest.approx(5.11704, abs=1e-5))
    assert mean_interval([0.5, 0.5]) == (0.5, 0.5)
    with pytest.raises(ValueError, match="at least two values"):
        mean_interval([1.0])


def test_seeds_interval_uses_students_t():
    # README's RFT row: 0.385, 0.375, 0.365: s = 0.01, half 4.303 * 0.01 / sqrt(3) = 0.02484
    lo, hi = seeds_interval([0.385, 0.375, 0.365])
    assert (lo, hi) == (pytest.approx(0.35016, abs=1e-5), pytest.approx(0.39984, abs=1e-5))
    with pytest.raises(ValueError, match="at least two values"):
        seeds_interval([1.0])


def test_mean_by_key_averages_each_key_over_the_maps_that_hold_it():
    got = mean_by_key([{"a": 0.5, "b": 1.0}, {"a": 0.25}, {}])
    assert got == {"a": 0.375, "b": 1.0} and list(got) == ["a", "b"]
    assert mean_by_key([]) == {}


def test_seeds_interval_quantiles_match_scipy():
    t = pytest.importorskip("scipy.stats").t
    for n in range(2, 33):
        values = [0.0, 1.0] + [0.5] * (n - 2)
        lo, hi = seeds_interval(values)
        s = (sum((v - sum(values) / n) ** 2 for v in values) / (n - 1)) ** 0.5
        expected = t.ppf(0.975, n - 1) if n <= 31 else 1.96
        assert (hi - lo) / 2 == pytest.approx(expected * s / n**0.5, abs=2e-3)


def test_isotonic_pools_each_fall_with_the_values_before_it():
    assert isotonic([1.0, 3.0, 2.0, 4.0]) == [1.0, 2.5, 2.5, 4.0]
    # 1 falls below 3 (2, 2), then 2 ties that block's mean and joins it
    assert isotonic([3.0, 1.0, 2.0]) == [2.0, 2.0, 2.0]
    # a later fall reaches back past an earlier block: 5, 1 -> 3, 3; then 0 pools all four
    assert isotonic([2.0, 5.0, 1.0, 0.0]) == [2.0, 2.0, 2.0, 2.0]
    assert isotonic([0.1, 0.2, 0.3]) == [0.1, 0.2, 0.3] and isotonic([]) == []
    # 1 pools with 5 (3, 3), which now falls below 4 and pools with it too: one merge back is not enough
    assert isotonic([4.0, 5.0, 1.0]) == pytest.approx([10 / 3] * 3)


def test_isotonic_matches_scipy():
    regression = pytest.importorskip("scipy.optimize").isotonic_regression
    rng = random.Random(0)
    for n in (1, 2, 5, 40, 200):
        values = [rng.random() + 0.01 * i for i in range(n)]
        assert isotonic(values) == pytest.approx(list(regression(values).x), abs=1e-12)


def write_metrics(run_dir, rows):
    pq.write_table(
        pa.Table.from_pylist(
            [{"step": s, "wall_s": w, "name": n, "value": v} for s, w, n, v in rows], schema=METRICS_SCHEMA
        ),
        run_dir / "metrics.parquet",
    )


def eval_rows(step, prefix, values):
    return [(step, 30.0 * step + 5, f"{prefix}/{k}", v) for k, v in values.items()]


def tictactoe_rows():
    """tictactoe vs random with every eval name; vs minimax without illegal or seat names."""
    rows = []
    for step, win, draw in ((0, 0.3, 0.1), (3, 0.8, 0.1)):
        full = {
            "win": win,
            "draw": draw,
            "loss": 1 - win - draw,
            "illegal": 0.0,
            "non_loss": win + draw,
            "games": 20,
            "return": 2 * win - 1,
            "first_win": win,
            "first_non_loss": win + draw,
            "second_win": win,
            "second_non_loss": win + draw,
        }
        rows += eval_rows(step, "eval/tictactoe/random", full)
        rows += eval_rows(
            step,
            "eval/tictactoe/minimax",
            {"win": 0.0, "draw": 0.5, "loss": 0.5, "non_loss": 0.5, "games": 10},
        )
    return rows


def league_rows():
    rows = []
    for step in range(4):
        rows += [
            (step, 30.0 * step, "league/learner_elo", 1000.0 + 5 * step),
            (step, 30.0 * step, "league/elo/snap-0", 1000.0 - 5 * step),
            (step, 30.0 * step, "league/members", 1 + (step >= 2)),
        ]
        if step >= 2:
            rows.append((step, 30.0 * step, "league/elo/snap-1", 1000.0))
        rows += [
            (step, 30.0 * step, f"league/vs_previous{k}", v)
            for k, v in {
                "_score": 0.55,
                "_lo": 0.45,
                "_hi": 0.65,
                "_games": 64,
                "/tictactoe/score": 0.6,
            }.items()
        ]
    # Snapshots: snap-0 re-ran every eval at step 0; snap-1 (step 2) has no minimax result.
    rows += eval_rows(0, "snapshot/snap-0/tictactoe/random", {"win": 0.25, "non_loss": 0.5})
    rows += eval_rows(0, "snapshot/snap-0/tictactoe/minimax", {"non_loss": 0.2})
    rows += eval_rows(0, "snapshot/snap-0/kuhn", {"exploitability": 0.458})
    rows += eval_rows(2, "snapshot/snap-1/tictactoe/random", {"non_loss": 0.875})
    rows += eval_rows(2, "snapshot/snap-1/kuhn", {"exploitability": 0.3})
    return rows


def save_league(run_dir, complete=True):
    """Learner beats snap-0 once, rated (k=32 from 1000 each: +-16); then unrated games:
    learner draws and loses against snap-1, snap-1 beats snap-0."""
    state = LeagueState()
    state.add_member(Member("snap-0", 0, 0, "league/snap-0", "c0"), step=0)
    state.record(LEARNER, "snap-0", 1.0, "tictactoe", step=5)
    state.add_member(Member("snap-1", 1, 10, "league/snap-1", "c1"), step=10)
    state.record(LEARNER, "snap-1", 0.5, "tictactoe", step=10, rate=False)
    state.record("snap-1", LEARNER, 1.0, "kuhn", step=10, rate=False)
    state.record("snap-1", "snap-0", 1.0, "tictactoe", step=10, rate=False)
    ckpt = run_dir / "checkpoints" / "step_0000010"
    ckpt.mkdir(parents=True)
    state.save(ckpt / "league.json")
    if complete:
        (ckpt / "COMPLETE").write_text("10")


def mixed_run(run_dir):
    rows = []
    for step in range(4):
        wall = 30.0 * step
        for name in (
            "loss",
            "pg_loss",
            "entropy",
            "kl_behaviour",
            "clip_frac",
            "batch_illegal",
            "tokens_per_s",
            "trajectories_per_s",
            "distinct_1",
            "distinct_2",
            "action_entropy/tictactoe",
            "action_entropy/kuhn",
        ):
            rows.append((step, wall, name, 0.1 * step + 1.0))
    rows += tictactoe_rows()
    for step, expl in ((0, 0.458), (3, 0.2)):
        rows += eval_rows(step, "eval/kuhn", {"exploitability": expl, "illegal_mass": 0.1 / (step + 1)})
        rows += eval_rows(
            step,
            "eval/kuhn/nash",
            {
                "win": 0.4,
                "draw": 0.0,
                "loss": 0.6,
                "illegal": 0.0,
                "non_loss": 0.4,
                "games": 10,
                "return": -0.1,
            },
        )
    write_metrics(run_dir, rows + league_rows())
    outcome = {
        "win": 0.3,
        "draw": 0.1,
        "loss": 0.6,
        "illegal": 0.05,
        "non_loss": 0.4,
        "return": -0.3,
        "games": 20,
    }
    (run_dir / "summary.json").write_text(
        json.dumps(
            {
                "before": {
                    "tictactoe/random": outcome,
                    "kuhn/exploitability": {"exploitability": 0.458, "illegal_mass": 0.1},
                },
                "after": {
                    "tictactoe/random": {
                        **outcome,
                        "win": 0.8,
                        "loss": 0.1,
                        "illegal": 0.0,
                        "non_loss": 0.9,
                        "return": 0.6,
                    },
                    "kuhn/exploitability": {"exploitability": 0.2, "illegal_mass": 0.025},
                },
                "steps": 3,
                "wall_s": 95.0,
                "games_per_eval": 40,
                "league": {"league/learner_elo": 1015.0},
                "turns": {
                    "generated": 12000,
                    "forwarded": 10000,
                    "trained": 9000,
                    "dropped_stale": 900,
                    "evicted": 0,
                    "never_trained": 500,
                    "never_trained_share": 0.05,
                },
                "busy": {"learner": 0.8, "generators": 0.25},
                "learner_mfu": 0.0123,
                "best": {"metric": "tictactoe/random/non_loss", "value": 0.95, "step": 2, "version": 2},
                "acceptance": {
                    "tictactoe/random/non_loss": {"value": 0.9, "target": ">= 0.98", "met": False},
                    "best/tictactoe/random/non_loss": {"value": None, "target": ">= 0.98", "met": False},
                },
            }
        )
    )
    (run_dir / "config.yaml").write_text(
        "seed: 1\nlearner:\n  lr: 1.0e-6  # <tuned>\nleague:\n  promote_threshold: 0.6\n"
    )
    save_league(run_dir)


PLOTS = [
    "curves_steps.png",
    "curves_wall.png",
    "exploitability.png",
    "exploitability_wall.png",
    "illegal.png",
    "elo.png",
    "promotion.png",
    "diversity.png",
    "throughput.png",
    "learner.png",
]


def test_write_report_writes_plots_tables_and_html(tmp_path):
    run_dir = tmp_path / "run-7"
    run_dir.mkdir()
    mixed_run(run_dir)

    md_path = write_report(run_dir)

    assert md_path == run_dir / "report" / "report.md"
    pngs = PLOTS + ["head_to_head.png"]
    assert sorted(p.name for p in (run_dir / "report").glob("*.png")) == sorted(pngs)
    for png in pngs:
        data = (run_dir / "report" / png).read_bytes()
        assert len(data) > 1000 and data[:8] == PNG_SIGNATURE, png
    md = md_path.read_text()
    assert md.startswith("# Run report: run-7\n")

    # Last evaluation. 18 of 20: centre 0.99604 / 1.19208 = 0.83555, half 1.96 * sqrt(0.0045
    # + 0.002401) / 1.19208 = 0.13659 -> (0.699, 0.972); 5 of 10: 0.5 +- 0.26341 -> (0.237, 0.763);
    # 4 of 10: centre 0.59208 / 1.38416 = 0.42775, half 1.96 * sqrt(0.024 + 0.009604) / 1.38416
    # = 0.25958 -> (0.168, 0.687)
    assert (
        "| game | opponent | step | games | win | draw | loss | illegal | non-loss | return"
        " | non-loss 95% CI |"
    ) in md
    assert "| kuhn | nash | 3 | 10 | 0.400 | 0.000 | 0.600 | 0.000 | 0.400 | -0.100 | [0.168, 0.687] |" in md
    assert (
        "| tictactoe | minimax | 3 | 10 | 0.000 | 0.500 | 0.500 | n/a | 0.500 | n/a | [0.237, 0.763] |" in md
    )
    assert (
        "| tictactoe | random | 3 | 20 | 0.800 | 0.100 | 0.100 | 0.000 | 0.900 | 0.600 | [0.699, 0.972] |"
        in md
    )

    # Kuhn exploitability before and after, apart from the GAME/OPP rows.
    assert "| exploitability | 0.458 | 0.200 | -0.258 |" in md
    assert "| illegal-mass | 0.100 | 0.025 | -0.075 |" in md
    assert "| kuhn | exploitability |" not in md

    # Before and after per GAME/OPP. 8 of 20: 0.41611 +- 0.19731 -> (0.219, 0.613)
    assert "| tictactoe | random | win | 0.300 | 0.800 | +0.500 |" in md
    assert "| tictactoe | random | illegal | 0.050 | 0.000 | -0.050 |" in md
    assert "| tictactoe | random | return | -0.300 | 0.600 | +0.900 |" in md
    assert "| tictactoe | random | games | 20 | 20 | +0 |" in md
    assert "| tictactoe | random | non-loss 95% CI | [0.219, 0.613] | [0.699, 0.972] |  |" in md

    # Acceptance, the best checkpoint's beside the final policy's.
    assert "best/: the best checkpoint (step 2, by tictactoe/random/non_loss)" in md
    assert "| tictactoe/random/non_loss | 0.900 | >= 0.98 | no |" in md
    assert "| best/tictactoe/random/non_loss | n/a | >= 0.98 | no |" in md

    # Work: where the turns went, busy fractions, MFU.
    work = md.split("## Work\n")[1].split("\n\n## ")[0]
    assert [line for line in work.splitlines() if line.startswith("|")] == [
        "| turns and time | value |",
        "| --- | --- |",
        "| generated | 12,000 |",
        "| forwarded | 10,000 |",
        "| trained | 9,000 |",
        "| dropped stale | 900 |",
        "| evicted | 0 |",
        "| never trained | 500 |",
        "| never trained / forwarded | 5.0% |",
        "| learner busy | 80% |",
        "| generators busy | 25% |",
        "| learner MFU | 1.23% |",
    ]

    # Capability retention: one row per snapshot; snap-1 never played minimax.
    retention = md.split("## Capability retention\n")[1].split("\n\n## ")[0]
    assert [line for line in retention.splitlines() if line.startswith("|")] == [
        "| member | step | tictactoe/minimax non-loss | tictactoe/random non-loss | kuhn exploitability |",
        "| --- | --- | --- | --- | --- |",
        "| snap-0 | 0 | 0.200 | 0.500 | 0.458 |",
        "| snap-1 | 2 | n/a | 0.875 | 0.300 |",
    ]

    # League: from checkpoints/step_0000010/league.json.
    assert "Learner Elo 1016.0; 2 members; 4 games recorded" in md
    league = md.split("## League\n")[1].split("\n\n## ")[0]
    assert [line for line in league.splitlines() if line.startswith("|")] == [
        "| member | step | Elo | learner W/D/L vs it |",
        "| --- | --- | --- | --- |",
        "| snap-0 | 0 | 984.0 | 1/0/0 |",
        "| snap-1 | 10 | 1000.0 | 0/1/1 |",
    ]

    for png in pngs:
        assert f"]({png})" in md
    assert "```yaml\nseed: 1\n" in md
    page = (run_dir / "report" / "report.html").read_text()
    for png in pngs:
        assert f'<img src="{png}"' in page
    assert "<td>[0.699, 0.972]</td>" in page
    assert "# &lt;tuned&gt;" in page and "<tuned>" not in page


def test_figures_follow_the_logged_names():
    names = [
        "eval/tictactoe/random/win",
        "eval/tictactoe/random/non_loss",
        "eval/tictactoe/minimax/win",
        "eval/textarena:Nim-v0/random/illegal",
        "league/vs_previous_score",
        "league/elo/snap-10",
        "league/elo/snap-2",
    ]
    series = {n: {} for n in names}

    by_file = {file: panels for file, _, _, panels in figures(series, threshold=0.6)}

    curves = by_file["curves_steps.png"]
    assert [p.title for p in curves] == ["textarena:Nim-v0", "tictactoe"]
    assert curves[1].names == [
        "eval/tictactoe/minimax/win",
        "eval/tictactoe/minimax/non_loss",
        "eval/tictactoe/random/win",
        "eval/tictactoe/random/non_loss",
    ]
    assert "eval/textarena:Nim-v0/random/illegal" in by_file["illegal.png"][0].names
    assert by_file["elo.png"][0].names == ["league/learner_elo", "league/elo/snap-2", "league/elo/snap-10"]
    assert by_file["promotion.png"][0].hlines == [(0.6, "promote threshold (0.6)")]
    no_threshold = {file: panels for file, _, _, panels in figures(series, threshold=None)}
    assert no_threshold["promotion.png"][0].hlines == []


def test_promote_threshold_is_read_from_the_league_config():
    assert promote_threshold("seed: 1\nleague:\n  enabled: true\n  promote_threshold: 0.7\n") == 0.7
    assert promote_threshold("seed: 1\nleague:\n  enabled: false\n") is None
    assert promote_threshold("seed: 1\n") is None


def test_report_without_kuhn_or_league_leaves_their_sections_out(tmp_path):
    write_metrics(tmp_path, tictactoe_rows())
    outcome = {"win": 0.3, "draw": 0.1, "loss": 0.6, "illegal": 0.05, "non_loss": 0.4, "games": 20}
    (tmp_path / "summary.json").write_text(
        json.dumps({"before": {"tictactoe/random": outcome}, "after": {"tictactoe/random": outcome}})
    )

    md = write_report(tmp_path).read_text()

    assert sorted(p.name for p in (tmp_path / "report").glob("*.png")) == [
        "curves_steps.png",
        "curves_wall.png",
        "illegal.png",
    ]
    assert "## Last evaluation" in md and "## Before and after training" in md
    for absent in ("Kuhn", "Capability retention", "## League", "exploitability", "Elo"):
        assert absent not in md, absent


def test_report_without_eval_or_summary_skips_what_is_absent(tmp_path):
    write_metrics(tmp_path, [(s, 10.0 * s, "loss", 1.0 / (s + 1)) for s in range(3)])
    save_league(tmp_path, complete=False)  # a checkpoint still being written is not read

    md = write_report(tmp_path).read_text()

    assert sorted(p.name for p in (tmp_path / "report").glob("*.png")) == ["learner.png"]
    for absent in ("Last evaluation", "Before and after", "Kuhn", "Capability retention", "League"):
        assert absent not in md, absent
    assert "](learner.png)" in md


def test_missing_metrics_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics were logged yet") as err:
        write_report(tmp_path)
    assert str(tmp_path / "metrics.parquet") in str(err.value)


def test_empty_metrics_file_is_an_error(tmp_path):
    write_metrics(tmp_path, [])
    with pytest.raises(ValueError, match="no metrics were logged yet"):
        write_report(tmp_path)


def test_a_task_runs_report_shows_its_held_out_curves_and_the_gain_over_the_supervised_stage(tmp_path):
    rows = []
    for step, acc in ((0, 0.0), (50, 0.2), (100, 0.35)):
        fields = {
            "accuracy": acc,
            "pass_at_k": acc + 0.1,
            "sample_accuracy": acc - 0.05,
            "valid": 1.0,
            "problems": 400,
        }
        rows += eval_rows(step, "eval/arithmetic/held_out", fields)
    rows += [(s, 30.0 * s, n, 0.3) for s in (10, 60) for n in ("task/accepted_share", "nll", "loss")]
    write_metrics(tmp_path, rows)
    result = {"accuracy": 0.35, "pass_at_k": 0.45, "sample_accuracy": 0.3, "valid": 1.0, "problems": 400}
    summary = {
        "before": {"arithmetic/held_out": {**result, "accuracy": 0.0}},
        "after_sft": {"arithmetic/held_out": {**result, "accuracy": 0.2}},
        "after": {"arithmetic/held_out": {**result, "accuracy_gain_over_sft": 0.15}},
        "acceptance": {
            "arithmetic/held_out/accuracy_gain_over_sft": {"value": 0.15, "target": ">= 0.10", "met": True}
        },
    }
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    md = write_report(tmp_path).read_text()
    assert "| arithmetic | 100 | 0.350 | 0.450 | 0.300 | 1.000 | 400 |" in md
    assert "| arithmetic | held_out | accuracy | 0.200 | 0.350 | +0.150 |" in md  # after the supervised stage
    assert "| arithmetic/held_out/accuracy_gain_over_sft | 0.150 | >= 0.10 | yes |" in md
    assert "win (solid)" not in md.lower()  # no game curves for a task
    for png in ("task_steps.png", "task_wall.png", "task_groups.png"):
        assert (tmp_path / "report" / png).read_bytes().startswith(PNG_SIGNATURE)


def test_a_judged_task_plots_the_judge_trained_against_beside_the_gold_judge():
    names = [f"eval/describe/held_out/{f}" for f in ("accuracy", "score", "gold_score", "sample_gold_score")]
    names += ["eval/arithmetic/held_out/accuracy"]
    by_file = {file: panels for file, _, _, panels in figures({n: {} for n in names}, threshold=None)}
    arithmetic, describe = by_file["task_steps.png"][:2]
    assert arithmetic.names == [
        f"eval/arithmetic/held_out/{f}" for f in ("accuracy", "pass_at_k", "sample_accuracy")
    ]
    assert describe.title == "describe: the judge trained against (score) and the gold judge"
    assert describe.names == [
        *(
            f"eval/describe/held_out/{f}"
            for f in ("score", "sample_score", "gold_score", "sample_gold_score")
        ),
        "monitor/alarm",
    ]


def test_a_solver_checker_report_adds_the_selection_figures(tmp_path):
    fields = {"accuracy": 0.9, "pass_at_k": 0.95, "sample_accuracy": 0.8, "valid": 1.0, "problems": 200}
    selection = {"selected_pass": 0.9, "random_pass": 0.8, "test_accuracy": 0.7, "test_valid": 0.9}
    selection.update(selection_gain=0.1, selection_gain_lo=0.07, selection_gain_hi=0.13)
    write_metrics(
        tmp_path,
        eval_rows(100, "eval/solver_checker/held_out", {**fields, **selection})
        + [(s, 30.0 * s, f"batch_reward/role_{r}", 0.5) for s in (10, 60) for r in (0, 1)],
    )
    summary = {"after": {"solver_checker/held_out": {**fields, **selection}}}
    (tmp_path / "summary.json").write_text(json.dumps(summary))
    md = write_report(tmp_path).read_text()
    header = "| problems | selected-pass | random-pass | test-accuracy | test-valid | selection-gain | selection-gain-lo |"
    assert header in md
    assert "| 200 | 0.900 | 0.800 | 0.700 | 0.900 | 0.100 | 0.070 | 0.130 |" in md
    assert "| solver_checker | held_out | selection-gain | n/a | 0.100 | n/a |" in md  # the final evaluation
    assert (tmp_path / "report" / "task_groups.png").exists()  # with the batch reward by role


def test_before_and_after_shows_each_kind_of_figure_by_what_it_measured():
    from selfplay.report import before_after_table

    summary = {
        "before": {"describe/held_out": {"accuracy": 0.0, "problems": 100, "score": 0.1}},
        "after": {
            "describe/held_out": {"accuracy": 0.0, "problems": 100, "score": 0.9},
            "describe/monitor": {"alarms": 1, "gold_retained": 0.25, "first_alarm_step": None},
            "reward_model/held_out": {"accuracy": 0.88, "pairs": 374},
        },
    }
    _, rows = before_after_table(summary)
    measures = {}
    for game, opponent, measure, *_ in rows:
        measures.setdefault(f"{game}/{opponent}", []).append(measure)
    assert "score" in measures["describe/held_out"] and "pass-at-k" in measures["describe/held_out"]
    assert measures["describe/monitor"] == ["alarms", "gold-retained"]  # no game outcomes, no None
    assert measures["reward_model/held_out"] == ["accuracy", "pairs"]  # not a task's pass@k


def test_the_retention_table_reads_a_task_snapshots_score_and_a_games_non_loss():
    from selfplay.report import retention_table

    def s(step, value):
        return {"step": [step], "value": [value], "wall_s": [0.0]}

    series = {
        "snapshot/snap-0/describe/held_out/score": s(100, 0.61),
        "snapshot/snap-0/describe/held_out/accuracy": s(100, 0.2),
        "snapshot/snap-1/describe/held_out/score": s(200, 0.74),
        "snapshot/snap-1/describe/held_out/accuracy": s(200, 0.3),
        "snapshot/snap-1/tictactoe/minimax/non_loss": s(200, 0.9),
    }
    header, rows = retention_table(series)
    assert header == ["member", "step", "describe/held_out score", "tictactoe/minimax non-loss"]
    assert [r[:3] for r in rows] == [["snap-0", "100", "0.610"], ["snap-1", "200", "0.740"]]
