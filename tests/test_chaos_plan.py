"""`make chaos`'s plan and verdict (bench/chaos.py): pure parts, no run."""

from __future__ import annotations

from bench.chaos import HEAL_S, acceptance, fault_schedule, planned_faults


def test_no_two_faults_land_together_and_each_kind_is_there():
    plan = fault_schedule(10, 60)
    times = [t for t, _ in plan]
    assert min(b - a for a, b in zip(times, times[1:])) >= 30
    assert [k for _, k in plan].count("kill_generator") == 10
    assert {t: k for t, k in plan if k != "kill_generator"} == {
        150: "hang_generator",
        330: "kill_learner",
        450: "kill_driver",
    }


def test_only_faults_the_run_can_still_heal_are_planned():
    plan = planned_faults(10, 60)
    assert max(t for t, _ in plan) == 480 <= 600 - HEAL_S  # the last kill: 540 would leave too little
    assert [k for _, k in plan].count("kill_generator") == 8
    assert {"hang_generator", "kill_learner", "kill_driver"} <= {k for _, k in plan}


def report(faulted: float, interval: tuple[float, float], survived: int = 8, duplicated: int = 0) -> dict:
    return {
        "faults_injected": 8,
        "faults_survived": survived,
        "books": {"duplicated_trajectories": duplicated, "duplicated_turns_in_buffer": 0},
        "final_eval": {
            "under_faults": {"steps": 115, "tictactoe/random": {"non_loss": faulted}},
            "undisturbed": {"steps": 115, "tictactoe/random": {"non_loss": 0.5, "interval": list(interval)}},
        },
    }


def test_the_verdict_reads_each_goal():
    ok = acceptance(report(0.48, (0.42, 0.58)))
    assert all(v["met"] for v in ok.values()) and set(ok) == {
        "duplicated",
        "faults_survived",
        "tictactoe/random/non_loss_within_undisturbed_ci",
    }
    bad = acceptance(report(0.30, (0.42, 0.58), survived=7, duplicated=1))
    assert not any(v["met"] for v in bad.values())
    assert bad["tictactoe/random/non_loss_within_undisturbed_ci"]["target"] == "in [0.420, 0.580]"
