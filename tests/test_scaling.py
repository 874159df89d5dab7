"""Generator pool math, the verifier's duplicate guard, and the cluster-facing config and
job checks that run before anything reaches a cluster."""

from __future__ import annotations

import re

import pyarrow as pa
import pytest

from actors.verifier import Verifier
from selfplay import jobs, schema
from selfplay.config import AutoscaleConfig, ConfigError, GeneratorConfig, load_config
from selfplay.scaling import autoscale_target, generator_bundles, idle_shares, pool_plan
from tests.rows import make_row


def tictactoe_game(traj_id: str) -> pa.Table:
    """A legal TicTacToe game the first player wins (cells 1, 2, 3); a response's token ids
    are its digits, as the verifier's decode below reads them."""
    moves = [1, 4, 2, 5, 3]
    return schema.from_rows(
        [
            make_row(
                traj_id=traj_id,
                turn=t,
                role=t % 2,
                response_ids=[m],
                response_text=str(m),
                outcome=1.0 if t % 2 == 0 else -1.0,
            )
            for t, m in enumerate(moves)
        ]
    )


def digits(ids: list[int]) -> str:
    return "".join(map(str, ids))


BOUNDS = AutoscaleConfig(
    enabled=True, min_generators=1, max_generators=3, learner_idle_high=0.2, generator_idle_high=0.5
)


def test_growing_takes_the_lowest_free_names():
    assert pool_plan(["generator-0"], 3) == (["generator-1", "generator-2"], [])
    assert pool_plan(["generator-0", "generator-2"], 4) == (["generator-1", "generator-3"], [])
    assert pool_plan([], 1) == (["generator-0"], [])


def test_shrinking_stops_the_highest_names_and_never_generator_0():
    live = ["generator-0", "generator-10", "generator-2", "generator-1"]
    assert pool_plan(live, 2) == ([], ["generator-2", "generator-10"])
    assert pool_plan(live, 1) == ([], ["generator-1", "generator-2", "generator-10"])
    assert pool_plan(["generator-0"], 1) == ([], [])


def test_a_pool_without_generator_0_starts_it_again_at_any_size():
    """Generator-0 failed and its replacement is not up yet when the pool is scaled to the
    size it has, or shrunk: evaluations run on generator-0, so it is started again in
    another's place (the pool once planned nothing, and the next evaluation waited for a
    generator-0 that never came, ending the run)."""
    assert pool_plan(["generator-1", "generator-2"], 2) == (["generator-0"], ["generator-2"])
    assert pool_plan(["generator-1", "generator-2", "generator-3"], 1) == (
        ["generator-0"],
        ["generator-1", "generator-2", "generator-3"],
    )
    assert pool_plan(["generator-2"], 3) == (["generator-0", "generator-1"], [])


def test_a_pool_cannot_be_emptied():
    with pytest.raises(ValueError, match="at least one generator"):
        pool_plan(["generator-0"], 0)


@pytest.mark.parametrize(
    "current, learner_idle, generator_idle, target",
    [
        (1, 0.5, 0.0, 2),  # the learner starves: grow
        (2, 0.1, 0.9, 1),  # generators are held back by the rate limit: shrink
        (2, 0.5, 0.9, 3),  # both: a starved learner wins
        (2, 0.2, 0.5, 2),  # at the thresholds: stay
        (3, 0.9, 0.0, 3),  # at max_generators
        (1, 0.0, 0.9, 1),  # at min_generators
        (5, 0.0, 0.0, 3),  # out of bounds (config changed on resume): clamped
    ],
)
def test_autoscale_rule(current, learner_idle, generator_idle, target):
    assert autoscale_target(current, learner_idle, generator_idle, BOUNDS) == target


def test_idle_shares_over_an_interval():
    # 10 s: the learner waited 4 s; two generators were held back 6 s between them
    assert idle_shares((100.0, 1.0, 2.0), (110.0, 5.0, 8.0), 2) == pytest.approx((0.4, 0.3))
    assert idle_shares((100.0, 0.0, 0.0), (100.0, 5.0, 5.0), 2) == (0.0, 0.0)  # no time passed
    assert idle_shares((0.0, 0.0, 0.0), (1.0, 3.0, -1.0), 1) == (1.0, 0.0)  # clamped


def test_a_tensor_parallel_generator_gets_one_gpu_bundle_per_worker():
    cfg = GeneratorConfig(num_cpus=4, num_gpus=1, tensor_parallel_size=2, resources={"generator": 1})
    assert generator_bundles(cfg) == [{"CPU": 2.0, "GPU": 1, "generator": 1}, {"CPU": 2.0, "GPU": 1}]


@pytest.mark.integration
def test_a_tensor_parallel_generator_that_fails_to_be_created_frees_its_placement_group(ray_session):
    """Its name still held (a failed generator being discarded while a scale starts it
    again): Ray refuses the actor when asked, after the placement group was made; nothing
    else held the group, whose GPUs stayed taken for the rest of the run."""
    from ray.util import placement_group_table

    from selfplay.program import spawn_generator

    cfg = load_config(overrides=["generator.tensor_parallel_size=2", "generator.num_gpus=1"])

    @ray_session.remote(num_cpus=0)
    class Holder:
        pass

    holder = Holder.options(name="generator-7").remote()
    try:
        before = set(placement_group_table())
        with pytest.raises(ValueError, match="generator-7"):
            spawn_generator(cfg, "test", "/nonexistent", "generator-7", 0)
        made = {k: v["state"] for k, v in placement_group_table().items() if k not in before}
        assert list(made.values()) == ["REMOVED"]
    finally:
        ray_session.kill(holder)


def test_the_verifier_rejects_a_trajectory_it_has_seen():
    verifier = Verifier(decode=digits)
    table = tictactoe_game("a")
    assert verifier.verify(table).num_rows == table.num_rows
    assert verifier.verify(table).num_rows == 0  # the same game again, e.g. from a retried call
    stats = verifier.stats()
    assert (stats["accepted"], stats["rejected_duplicate"], stats["received"]) == (1, 1, 2)
    assert stats["accepted_turns"] == table.num_rows


def test_the_verifier_rejects_a_trajectory_whose_rows_name_other_games_or_seeds():
    """It replays the first row's game: a row of another game or deal went on to train as
    that game's move (the learner's baselines are keyed by each row's own game)."""
    rows = tictactoe_game("a").to_pylist()
    for field, value in (("game", "kuhn"), ("seed", 12345)):
        table = schema.from_rows([{**r, field: value} if r["turn"] == 1 else r for r in rows])
        verifier = Verifier(decode=digits)
        assert verifier.verify(table).num_rows == 0
        assert verifier.stats()["rejected_mixed_game"] == 1


def test_the_verifiers_counters_survive_a_checkpoint(tmp_path):
    import json

    verifier = Verifier(decode=digits)
    table = tictactoe_game("a")
    verifier.training_turns(table)
    verifier.verify(table)  # rejected as a duplicate
    saved = json.loads(json.dumps(verifier.counters()))  # as VerifierActor.save writes it
    resumed = Verifier(decode=digits)
    resumed.load_counters(saved)
    assert resumed.stats() == verifier.stats() and resumed.stats()["received_by"] == {"gen-0": 2}


def test_the_duplicate_window_is_bounded():
    verifier = Verifier(decode=digits, remember=2)
    games = [tictactoe_game(traj_id) for traj_id in "abc"]
    for game in games:
        verifier.verify(game)
    assert len(verifier.seen) == 2
    assert verifier.verify(games[0]).num_rows == games[0].num_rows  # forgotten: accepted again
    assert verifier.verify(games[2]).num_rows == 0


@pytest.mark.parametrize(
    "override, message",
    [
        ("generator.resources={generator: 0}", "generator.resources.generator: must be > 0"),
        ("learner.resources={GPU: 1}", "learner.resources.GPU: use learner.num_cpus / num_gpus"),
        ("generator.tensor_parallel_size=2", "generator.tensor_parallel_size: > 1 needs generator.num_gpus"),
        ("autoscale.min_generators=5", "autoscale.min_generators: must not exceed"),
    ],
)
def test_cluster_config_errors_name_the_field(override, message):
    with pytest.raises(ConfigError, match=re.escape(message)):
        load_config(overrides=[override])


def test_autoscale_bounds_must_hold_the_initial_pool():
    with pytest.raises(ConfigError, match="generator.num_generators: must be within autoscale bounds"):
        load_config(overrides=["autoscale.enabled=true", "autoscale.min_generators=2"])


@pytest.mark.parametrize("name", ["run 1", "../up", "", "-x", "a/b", "demo\n"])
def test_run_names_must_be_usable_as_job_id_namespace_and_directory(name):
    with pytest.raises(ConfigError, match="--name"):
        jobs.check_name(name)


def test_a_cluster_run_needs_absolute_storage_before_anything_is_sent(tmp_path):
    config = tmp_path / "run.yaml"
    config.write_text("name: x\n")
    with pytest.raises(ConfigError, match="out_dir: 'runs' is relative"):
        jobs.submit(str(config), "x", address="http://127.0.0.1:9")  # nothing listens there
    with pytest.raises(ConfigError, match="learner.lrr: unknown field"):
        jobs.submit(str(config), "x", ["learner.lrr=1"], address="http://127.0.0.1:9", storage="/data")


def test_job_address_order(monkeypatch):
    monkeypatch.delenv("RAY_API_SERVER_ADDRESS", raising=False)
    monkeypatch.setenv("RAY_ADDRESS", "10.0.0.1:6379")  # a GCS address is not a job server
    assert jobs.job_address(None) == jobs.DEFAULT_ADDRESS
    monkeypatch.setenv("RAY_ADDRESS", "http://head:8265")
    assert jobs.job_address(None) == "http://head:8265"
    monkeypatch.setenv("RAY_API_SERVER_ADDRESS", "http://api:8265")
    assert jobs.job_address(None) == "http://api:8265"
    assert jobs.job_address("http://given:1") == "http://given:1"


def test_runtime_env_ships_this_checkout_and_pins_a_graceful_stop():
    env = jobs.runtime_env("/tmp/w", {"A": "1"}, ["pkg==1"], None)
    assert [p.rsplit("/", 1)[1] for p in env["py_modules"]] == ["selfplay", "actors", "learner"]
    assert env["env_vars"]["A"] == "1" and env["env_vars"]["RAY_JOB_STOP_WAIT_TIME_S"] == "120"
    assert env["pip"] == ["pkg==1"] and "image_uri" not in env


LEAVE_WORKING_DIR = """
import os, shutil, sys
from pathlib import Path
from selfplay import jobs
job_dir, out_dir = sys.argv[1:]
os.chdir(job_dir)
out = jobs.leave_job_working_dir(out_dir)
shutil.rmtree(job_dir)  # as Ray 2.60 does when a worker with the job's runtime env starts
print(out, os.getcwd(), Path("x").resolve())
"""


@pytest.mark.parametrize("in_job", [True, False])
def test_a_job_driver_moves_to_its_storage_before_ray_deletes_its_working_dir(tmp_path, in_job):
    """In a job (the supervisor's variable set), the driver's cwd becomes the run's storage,
    so the working_dir Ray deletes and unpacks again under it breaks nothing later; outside
    a job nothing moves (and the deleted directory fails as it did in a job before)."""
    import os
    import subprocess
    import sys

    job_dir, out_dir = tmp_path / "working_dir", tmp_path / "storage" / "runs"
    job_dir.mkdir()
    env = {k: v for k, v in os.environ.items() if k != jobs.JOB_ENV_VAR}
    if in_job:
        env[jobs.JOB_ENV_VAR] = "{}"
    code = [sys.executable, "-c", LEAVE_WORKING_DIR, str(job_dir), str(out_dir)]
    out = subprocess.run(code, env=env, capture_output=True, text=True)
    if in_job:
        assert out.returncode == 0, out.stderr[-2000:]
        assert out.stdout.split() == [str(out_dir), str(out_dir), str(out_dir / "x")]
    else:
        assert out.returncode != 0 and "No such file or directory" in out.stderr
        assert not out_dir.exists()


def test_scaling_a_run_refuses_a_pool_without_generator_0_before_submitting_anything(monkeypatch):
    """`selfplay scale RUN --generators -3` submitted a job that failed in the controller and
    came back as 3,000 characters of traceback; now one line, with no cluster asked."""
    from selfplay import jobs

    monkeypatch.setattr(jobs, "client", lambda address: pytest.fail("no cluster is asked"))
    for generators, timeout, message in [
        (-3, 600, "--generators: at least 1"),
        (0, 600, "got 0"),
        (2, 0, "--timeout"),
    ]:
        with pytest.raises(jobs.JobError, match=message):
            jobs.scale("demo", generators, timeout_s=timeout)
        with pytest.raises(jobs.JobError, match=message):
            jobs.scale_connected("demo", generators, timeout_s=timeout)


@pytest.mark.parametrize("state, code", [("SUCCEEDED", 0), ("FAILED", 1), ("STOPPED", 1)])
def test_following_a_runs_logs_exits_as_the_job_ended(monkeypatch, capsys, state, code):
    """As `submit --follow`: `selfplay logs RUN --follow && next` went on after a failure."""
    from selfplay import cli, jobs

    monkeypatch.setattr(jobs, "follow", lambda run, address: state)
    assert cli.main(["logs", "demo", "--follow"]) == code
    assert capsys.readouterr().out.strip().endswith(f"run demo: {state}")
