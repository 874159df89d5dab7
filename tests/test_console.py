"""What a person sees of a run (selfplay/console.py): the bar's total follows the limit
that ends the run, results in a few lines, library output in the run's log file."""

from __future__ import annotations

import os
import subprocess
import sys

from selfplay.console import bar_total, result_lines


def test_the_bar_ends_at_the_step_cap_when_no_time_limit_binds():
    assert bar_total(100, 2000, 0.7, float("inf")) == 2000
    assert bar_total(0, 2000, None, 900.0) == 2000  # pace unknown before the first chunk


def test_the_bar_ends_where_the_time_limit_will_stop_the_run():
    # 100 steps done at 0.7 steps/s with 600 s left: the run ends near step 100 + 420
    assert bar_total(100, 2000, 0.7, 600.0) == 520
    assert bar_total(100, 300, 0.7, 600.0) == 300  # the step cap comes first
    assert bar_total(100, 2000, 0.7, -5.0) == 100  # past the deadline: ends where it is


def test_results_show_each_evaluation_before_and_after():
    summary = {
        "before": {"tictactoe/minimax": {"non_loss": 0.0}, "kuhn/exploitability": {"exploitability": 0.49}},
        "after": {"tictactoe/minimax": {"non_loss": 0.915}, "kuhn/exploitability": {"exploitability": 0.04}},
    }
    lines = result_lines(summary)
    assert lines == [
        "  kuhn/exploitability          exploitability   0.490 -> 0.040",
        "  tictactoe/minimax            non_loss         0.000 -> 0.915",
    ]
    assert result_lines({"after": {"tictactoe/random": {"non_loss": 0.5}}})[0].endswith("- -> 0.500")
    task = {
        "before": {"describe/held_out": {"accuracy": 0.0, "score": 0.544}},
        "after": {
            "describe/held_out": {"accuracy": 0.0, "score": 0.826},
            "league/snapshots": {"promotions": 3},
        },
    }
    assert result_lines(task) == [
        "  describe/held_out            score            0.544 -> 0.826",
        "  league/snapshots             promotions           - -> 3.000",
    ]


def test_library_output_goes_to_the_log_and_key_lines_to_the_terminal(tmp_path):
    """In a child process (the redirect works on file descriptors 1 and 2): Python prints,
    warnings and a C-level write land in the log; console.print reaches the terminal."""
    script = f"""
import os, sys, warnings
from selfplay.console import Console
c = Console({str(tmp_path / "run.log")!r})
print("library chatter")
warnings.warn("a deprecation")
os.write(2, b"native stderr\\n")
c.print("step 5 eval/tictactoe/random: non-loss 0.500")
c.close()
print("after close")
"""
    out = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, cwd=os.getcwd()
    )
    assert out.returncode == 0, out.stderr
    log = (tmp_path / "run.log").read_text()
    assert "library chatter" in log and "a deprecation" in log and "native stderr" in log
    terminal = out.stdout + out.stderr
    assert "step 5 eval/tictactoe/random: non-loss 0.500" in terminal and "after close" in terminal
    assert (
        "library chatter" not in terminal
        and "a deprecation" not in terminal
        and "native stderr" not in terminal
    )
