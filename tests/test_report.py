"""The run report: Wilson intervals on hand-worked numbers, and plots + Markdown + HTML
written from a small metrics.parquet."""
from __future__ import annotations

import json

import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from selfplay.metrics import METRICS_SCHEMA
from selfplay.report import wilson_interval, write_report

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


def write_metrics(run_dir, rows):
    pq.write_table(pa.Table.from_pylist(
        [{"step": s, "wall_s": w, "name": n, "value": v} for s, w, n, v in rows],
        schema=METRICS_SCHEMA), run_dir / "metrics.parquet")


def small_run(run_dir):
    rows = []
    for step in range(4):
        wall = 30.0 * step
        for name in ("loss", "pg_loss", "entropy", "kl_behaviour", "clip_frac", "batch_illegal",
                     "tokens_per_s", "trajectories_per_s"):
            rows.append((step, wall, name, 0.1 * step + 1.0))
    # random: every eval name; minimax: no illegal and no per-seat names.
    for step, win, draw in ((0, 0.3, 0.1), (3, 0.8, 0.1)):
        full = {"win": win, "draw": draw, "loss": 1 - win - draw, "illegal": 0.0,
                "non_loss": win + draw, "games": 20, "first_win": win, "first_non_loss": win + draw,
                "second_win": win, "second_non_loss": win + draw}
        rows += [(step, 30.0 * step + 5, f"eval/random/{k}", v) for k, v in full.items()]
        rows += [(step, 30.0 * step + 5, f"eval/minimax/{k}", v)
                 for k, v in {"win": 0.0, "draw": 0.5, "loss": 0.5, "non_loss": 0.5, "games": 10}.items()]
    write_metrics(run_dir, rows)
    outcome = {"win": 0.3, "draw": 0.1, "loss": 0.6, "illegal": 0.05, "non_loss": 0.4, "games": 20}
    (run_dir / "summary.json").write_text(json.dumps({
        "before": {"random": outcome},
        "after": {"random": {**outcome, "win": 0.8, "loss": 0.1, "illegal": 0.0, "non_loss": 0.9}},
        "steps": 3}))
    (run_dir / "config.yaml").write_text("seed: 1\nlearner:\n  lr: 1.0e-6  # <tuned>\n")


def test_write_report_writes_plots_tables_and_html(tmp_path):
    run_dir = tmp_path / "run-7"
    run_dir.mkdir()
    small_run(run_dir)

    md_path = write_report(run_dir)

    assert md_path == run_dir / "report" / "report.md"
    pngs = ["curves_steps.png", "curves_wall.png", "illegal.png", "throughput.png", "learner.png"]
    for png in pngs:
        data = (run_dir / "report" / png).read_bytes()
        assert len(data) > 1000 and data[:8] == PNG_SIGNATURE, png
    md = md_path.read_text()
    assert md.startswith("# Run report: run-7\n")
    # 18 of 20: centre 0.99604 / 1.19208 = 0.83555, half 1.96 * sqrt(0.0045 + 0.002401) / 1.19208
    # = 0.13659 -> (0.699, 0.972); 5 of 10: 0.5 +- 0.26341 -> (0.237, 0.763)
    assert "| random | 3 | 20 | 0.800 | 0.100 | 0.100 | 0.000 | 0.900 | [0.699, 0.972] |" in md
    assert "| minimax | 3 | 10 | 0.000 | 0.500 | 0.500 | n/a | 0.500 | [0.237, 0.763] |" in md
    assert "| random | win | 0.300 | 0.800 | +0.500 |" in md
    assert "| random | illegal | 0.050 | 0.000 | -0.050 |" in md
    assert "| random | games | 20 | 20 | +0 |" in md
    assert "| opponent | step | games | win | draw | loss | illegal | non-loss | non-loss 95% CI |" in md
    # 8 of 20: 0.41611 +- 0.19731 -> (0.219, 0.613)
    assert "| random | non-loss | 0.400 | 0.900 | +0.500 |" in md
    assert "| random | non-loss 95% CI | [0.219, 0.613] | [0.699, 0.972] |  |" in md
    for png in pngs:
        assert f"]({png})" in md
    assert "```yaml\nseed: 1\n" in md

    page = (run_dir / "report" / "report.html").read_text()
    for png in pngs:
        assert f'<img src="{png}"' in page
    assert "<td>[0.699, 0.972]</td>" in page
    assert "# &lt;tuned&gt;" in page and "<tuned>" not in page


def test_report_without_eval_or_summary_skips_what_is_absent(tmp_path):
    write_metrics(tmp_path, [(s, 10.0 * s, "loss", 1.0 / (s + 1)) for s in range(3)])

    md = write_report(tmp_path).read_text()

    assert sorted(p.name for p in (tmp_path / "report").glob("*.png")) == ["learner.png"]
    assert "Last evaluation" not in md and "Before and after" not in md
    assert "](learner.png)" in md


def test_missing_metrics_file_names_the_path(tmp_path):
    with pytest.raises(FileNotFoundError, match="no metrics were logged yet") as err:
        write_report(tmp_path)
    assert str(tmp_path / "metrics.parquet") in str(err.value)


def test_empty_metrics_file_is_an_error(tmp_path):
    write_metrics(tmp_path, [])
    with pytest.raises(ValueError, match="no metrics were logged yet"):
        write_report(tmp_path)
