"""`make chaos`'s plan and verdict (bench/chaos.py): pure parts, no run."""

from __future__ import annotations

import json

import pytest

from bench import chaos
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


def report(faulted: float, survived: int = 8, duplicated: int = 0) -> dict:
    """The undisturbed run's non-loss 0.5 over 200 games, the faulted run's `faulted`."""
    return {
        "faults_injected": 8,
        "faults_survived": survived,
        "books": {"duplicated_trajectories": duplicated, "duplicated_turns_in_buffer": 0},
        "final_eval": {
            "under_faults": {"steps": 115, "tictactoe/random": {"non_loss": faulted, "games": 200}},
            "undisturbed": {"steps": 115, "tictactoe/random": {"non_loss": 0.5, "games": 200}},
        },
    }


def test_the_verdict_reads_each_goal():
    key = "tictactoe/random/non_loss_minus_undisturbed"
    ok = acceptance(report(0.48))
    assert all(v["met"] for v in ok.values()) and set(ok) == {"duplicated", "faults_survived", key}
    # 118/200 against 100/200: outside the undisturbed run's own Wilson interval (0.431-0.569),
    # which two runs alike miss 17% of the time; the difference's interval holds 0
    close = acceptance(report(0.59))[key]
    assert close["met"] and close["value"] == pytest.approx(0.09)
    assert close["target"] == "95% interval [-0.007, 0.185] holds 0"
    bad = acceptance(report(0.30, survived=7, duplicated=1))
    assert not any(v["met"] for v in bad.values())
    assert bad[key]["target"] == "95% interval [-0.291, -0.104] holds 0"
    # an evaluation of no games (every one too long for the context) proves nothing
    for run in ("under_faults", "undisturbed"):  # either run's
        empty = report(0.5)
        empty["final_eval"][run]["tictactoe/random"]["games"] = 0
        assert acceptance(empty)[key]["met"] is False
    # no fault injected: none survived, whatever the count says
    none = report(0.5, survived=0)
    none["faults_injected"] = 0
    assert acceptance(none)["faults_survived"]["met"] is False


def test_the_difference_interval_is_newcombes_hybrid_score_interval():
    from selfplay.stats import difference_interval

    # Newcombe (1998), Table II, method 10: 56/70 - 48/80 and 9/10 - 3/10
    assert difference_interval(56, 70, 48, 80) == pytest.approx((0.0524, 0.3339), abs=1e-4)
    assert difference_interval(9, 10, 3, 10) == pytest.approx((0.1705, 0.8090), abs=1e-4)
    assert difference_interval(0, 0, 3, 10) == (-1.0, 1.0)  # nothing measured: any difference


def test_each_generator_fault_is_healed_by_a_failure_of_its_own_kind(tmp_path):
    """The hang (SIGSTOP at 150 s) is seen hung only after hang_timeout_s; the kill at 180 s
    is seen at once. The kill's failure is not the hang's: a hang the pool never saw was
    counted survived. Each failure heals one fault, in time order."""
    log = [
        {"event": "failed", "generator": "generator-1", "time": 181.0, "reason": "died: RayActorError"},
        {"event": "start", "generator": "generator-1", "time": 200.0},
    ]
    (tmp_path / "scaling.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))
    hang, kill = {"kind": "hang_generator", "time": 150.0}, {"kind": "kill_generator", "time": 180.0}
    assert chaos.survived([hang, kill], tmp_path) == [False, True]
    second = {"kind": "kill_generator", "time": 181.5}  # one failure heals one kill
    assert chaos.survived([kill, second], tmp_path) == [True, False]
    other = [log[0], {"event": "start", "generator": "generator-2", "time": 200.0}]  # not its replacement
    (tmp_path / "scaling.jsonl").write_text("".join(json.dumps(e) + "\n" for e in other))
    assert chaos.survived([kill], tmp_path) == [False]
    (tmp_path / "scaling.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))
    log[1:1] = [{"event": "failed", "generator": "generator-0", "time": 215.0, "reason": "hung: no beat"}]
    log.append({"event": "start", "generator": "generator-0", "time": 240.0})
    (tmp_path / "scaling.jsonl").write_text("".join(json.dumps(e) + "\n" for e in log))
    assert chaos.survived([hang, kill, {"kind": "kill_driver", "time": 230.0}], tmp_path) == [
        True,
        True,
        True,
    ]
