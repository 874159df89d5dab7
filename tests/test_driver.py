"""The driver end to end on a real local Ray with a real vLLM engine: every task method
after its supervised stage, and the CLI. Checkpoint and resume: test_league_run.py."""

from __future__ import annotations

import dataclasses
import json
import subprocess
import sys
import threading
import time

import pyarrow.parquet as pq
import pytest
import ray
import torch
from safetensors.torch import load_file

from learner.learner import REFERENCE
from selfplay import driver, reward_model
from selfplay.config import BuilderConfig, RewardModelConfig, SftConfig, TaskConfig, save_config
from selfplay.league import LeagueState
from tests.waiting import wait_for

pytestmark = pytest.mark.integration


ARITHMETIC = {"name": "arithmetic", "params": {"digits": 1, "terms": 2}}
SOLVER_CHECKER = {"name": "solver_checker", "params": {"steps": 2}}
REFINE = {"name": "refine", "params": {"digits": 1, "terms": 2}}
WORDS = {"name": "words", "params": {"max_value": 99}, "prompts": "sft"}


def task_run_config(small_cfg, tmp_path, steps: int, max_response_tokens: int, reference: bool, **fields):
    """A short task run: `steps` steps logged every 2, one checkpoint at the end, batches of
    32 group-advantage rows, the learning rate falling linearly over the run's steps. It is
    evaluated before, after the supervised stage and at the end, all while nothing trains:
    on generator-0's own engine (the league run covers evaluations mid-run). `fields`: the
    rest of the config (task, builder, sft, ...)."""
    return dataclasses.replace(
        small_cfg,
        total_steps=steps,
        log_every=2,
        checkpoint_every=steps,
        out_dir=str(tmp_path),
        generator=dataclasses.replace(small_cfg.generator, max_response_tokens=max_response_tokens),
        learner=dataclasses.replace(
            small_cfg.learner, batch_size=32, advantage="group", reference=reference, lr_schedule="linear"
        ),
        buffer=dataclasses.replace(small_cfg.buffer, min_size=32, max_staleness=4),
        eval=dataclasses.replace(small_cfg.eval, every_steps=100),
        **fields,
    )


@pytest.mark.parametrize(
    "task, builder",
    [
        # rejection sampling: every reply is accepted (an untrained model is never right)
        (ARITHMETIC, {"rows": "sft", "accept_reward": 0.0}),
        # group advantages behind the variance filter: every group of an untrained model
        # agrees (all wrong), so batches fill from the reserve instead of stalling; new
        # problems drawn by the learnability curriculum
        (
            {**ARITHMETIC, "curriculum": "learnability"},
            {"rows": "rl", "variance_filter": True, "fill_after": 32},
        ),
        # solver + checker: both roles sampled, judged by each other in the sandbox
        (SOLVER_CHECKER, {"rows": "rl"}),
        # generate -> critique -> refine: a chain per sample, each role's own advantages
        (REFINE, {"rows": "rl"}),
        # ... its first answer held by the KL to the reference alone (rows labelled anchor)
        (REFINE, {"rows": "rl", "anchored_roles": ["answer"]}),
        # SPIN: the supervised stage's prompts only, each wrong sample paired with the
        # target under DPO against a reference (an untrained model is never right)
        (WORDS, {"rows": "spin"}),
    ],
    ids=["rft", "grpo-filtered", "solver-checker", "refine", "refine-anchored", "spin"],
)
def test_a_task_run_trains_after_its_supervised_stage(ray_session, small_cfg, tmp_path, task, builder):
    """The supervised stage, then rows from generator -> verifier -> builder -> learner."""
    name = task["name"]
    cfg = task_run_config(
        small_cfg,
        tmp_path,
        steps=6,
        max_response_tokens=4,
        reference=builder["rows"] == "spin",
        task=TaskConfig(
            **task,
            samples_per_prompt=4,
            prompts_per_wave=8,
            held_out=4,
            eval_samples=2,
        ),
        builder=BuilderConfig(**builder),
        sft=SftConfig(steps=2, examples=40),
        acceptance={f"{name}/held_out/accuracy_gain_over_sft": ">= -1"},
        # met by the chunk of steps 5-6, once four values come after the supervised stage
        # (counting its two, the chunk of steps 3-4 would already have stopped the run)
        stop_when={"weight_version": ">= 0"},
        stop_window=4,
    )
    if builder["rows"] == "spin":  # SPIN's reference is the iterate sampled: every broadcast's
        cfg = dataclasses.replace(cfg, learner=dataclasses.replace(cfg.learner, ref_refresh_every=1))
    anchored = bool(builder.get("anchored_roles"))
    if anchored:
        cfg = dataclasses.replace(cfg, learner=dataclasses.replace(cfg.learner, anchor_coef=1.0))
    run_dir = driver.train(dataclasses.replace(cfg, total_steps=8))  # stop_when ends it at 6
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 6
    assert summary["stopped_when"] == {"metric": "weight_version", "mean": 4.5, "target": ">= 0", "step": 6}
    assert set(summary["after_sft"]) == {f"{name}/held_out"}
    gain = summary["acceptance"][f"{name}/held_out/accuracy_gain_over_sft"]["value"]
    after, after_sft = summary["after"][f"{name}/held_out"], summary["after_sft"][f"{name}/held_out"]
    assert gain == pytest.approx(after["accuracy"] - after_sft["accuracy"])
    assert summary["best"]["selected_on"] == "the held-out evaluations (optimistic)"
    assert not any(name.startswith("best/") for name in summary["acceptance"])
    metrics = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    sft_rows = {m["step"]: m["value"] for m in metrics if m["name"] == "sft_rows"}
    assert sft_rows[1] == sft_rows[2] == 32  # the supervised stage: labelled rows only
    versions = {m["step"]: m["value"] for m in metrics if m["name"] == "weight_version"}
    assert versions[6] == 6  # every step broadcast
    # the rate each step took: the supervised stage's, then learner.lr * (0.1 + 0.9 (1 - p)),
    # p = the steps before it / total_steps (8; no time limit): 2/8, 3/8, 4/8, 5/8
    lrs = {m["step"]: m["value"] for m in metrics if m["name"] == "lr"}
    lr = cfg.learner.lr
    assert lrs == pytest.approx({1: lr, 2: lr, 3: 0.775 * lr, 4: 0.6625 * lr, 5: 0.55 * lr, 6: 0.4375 * lr})
    # steps 3-6 trained on generated replies, scored by the verifier and built by the builder
    assert summary["turns"]["generated"] > 0 and summary["turns"]["trained"] >= 4 * 32 - 32
    # the generation wasted, logged after every chunk of steps: it only grows, to the summary's
    never = [
        m["value"] for m in sorted(metrics, key=lambda m: m["step"]) if m["name"] == "buffer_never_trained"
    ]
    assert len(never) >= 2 and never == sorted(never) and never[-1] <= summary["turns"]["never_trained"]
    verifier = summary["pool"]["verifier"]
    turns = 3 if name == "refine" else 1  # a chain is one trajectory of a turn per role
    assert verifier["accepted"] * turns == summary["turns"]["forwarded"] > 0
    if name == "solver_checker":  # both roles trained; the held-out figures of its own tests' pick
        assert {"batch_reward/role_0", "batch_reward/role_1"} <= {m["name"] for m in metrics}
        assert after["selection_gain"] == pytest.approx(after["selected_pass"] - after["random_pass"])
        assert after["sample_accuracy"] == pytest.approx(after["random_pass"])
    elif name == "refine":  # three roles trained; the held-out chains' figures
        trained = {m["name"] for m in metrics if m["name"].startswith("batch_reward/role_")}
        if anchored:  # the first answer's rows train the KL alone: no reward of its own in the batch
            assert trained == {"batch_reward/role_1", "batch_reward/role_2"}
            anchor = {m["step"]: m["value"] for m in metrics if m["name"] == "anchor_rows"}
            assert set(anchor) >= {3, 4, 5, 6} and all(v > 0 for v in anchor.values())
            assert {3, 4, 5, 6} <= {m["step"] for m in metrics if m["name"] == "kl_anchor"}
            assert summary["task"]["rows_anchored"] > 0
        else:
            assert trained == {f"batch_reward/role_{r}" for r in range(3)}
        assert after["first_accuracy"] == after["accuracy"]
        assert after["refine_gain"] == pytest.approx(after["refined_accuracy"] - after["first_accuracy"])
        assert 0 <= after["critic_agreement"] <= after["critic_valid"]
        assert (run_dir / "preferences").is_dir()  # chains whose answers differ in rightness go there
        pairs = list((run_dir / "preferences").glob("part-*.parquet"))
        assert all(set(pq.read_table(p)["method"].to_pylist()) == {"refine"} for p in pairs)
    elif builder["rows"] == "spin":  # pairs only after the supervised stage, each a DPO step
        assert all(sft_rows.get(s, 0) == 0 for s in (3, 4, 5, 6))
        pairs = {m["step"]: m["value"] for m in metrics if m["name"] == "pairs"}
        assert all(pairs[s] > 0 for s in (3, 4, 5, 6))
        margins = {m["step"] for m in metrics if m["name"] == "reward_margin"}
        assert {3, 4, 5, 6} <= margins
    elif builder["rows"] == "sft":
        assert all(sft_rows[s] > 0 for s in (3, 4, 5, 6))
    else:
        assert all(sft_rows[s] == 0 for s in (3, 4, 5, 6))
        assert any(m["name"] == "task/filled_from_reserve" and m["value"] > 0 for m in metrics)
        # the generator measured each difficulty class of 1-digit sums that its groups met
        learnability = summary["task"]["learnability"]
        assert learnability and set(learnability) <= {"1+1 c0", "1+1 c1"}
        assert all(0 <= rate <= 1 for rate in learnability.values())


def test_eval_cli_plays_a_checkpoint_against_another_model_with_legal_moves_only(tiny_model, tmp_path):
    out = subprocess.run(
        [
            sys.executable,
            "-m",
            "selfplay.cli",
            "eval",
            "--checkpoint",
            tiny_model,
            "--opponent",
            tiny_model,
            "--games",
            "3",
            "--json",
            "--enforce-eager",
            "--legal-moves-only",  # both models masked: an untrained one plays only free cells
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert out.returncode == 0, out.stderr[-2000:]
    result = json.loads(out.stdout)  # nothing but the JSON on stdout
    assert result["games"] == 6 and result["opponent"] == tiny_model
    assert result["win"] + result["draw"] + result["loss"] == pytest.approx(1.0)
    assert result["illegal"] == 0


def test_a_run_that_fails_to_start_leaves_no_actor_behind(ray_session, small_cfg, tmp_path, monkeypatch):
    """Its program built, then the start failed (here: making the labelled set): on a Ray
    this process stays connected to (a notebook's, a test's), its actors outlived it and
    the next run waited a minute for their names, then failed on them."""
    from selfplay.program import run_actor_names

    def fail(*args):
        raise RuntimeError("the labelled set could not be made")

    closed = spy_on_metrics_close(monkeypatch)
    monkeypatch.setattr(driver, "labelled_set", fail)
    cfg = task_run_config(
        small_cfg,
        tmp_path,
        steps=4,
        max_response_tokens=4,
        reference=False,
        task=TaskConfig(**ARITHMETIC, samples_per_prompt=4, prompts_per_wave=8, held_out=4),
        builder=BuilderConfig(rows="rl"),
        sft=SftConfig(steps=2, examples=40),
    )
    with pytest.raises(RuntimeError, match="labelled set could not be made"):
        driver.train(cfg)
    assert run_actor_names() == []
    assert closed == [True]  # its metrics log too (the TensorBoard writer's thread and file)


def test_a_program_that_fails_part_way_leaves_no_actor_behind(ray_session, small_cfg, tiny_model, tmp_path):
    """A checkpoint whose buffer does not load: the buffer actor, made before the load, held
    its name (build_program's failures come before Run has a program to discard)."""
    from selfplay.program import build_program, run_actor_names

    with pytest.raises(ray.exceptions.RayTaskError, match="buffer.parquet"):
        build_program(small_cfg, "broken", tiny_model, tmp_path)  # an empty directory as the checkpoint
    assert run_actor_names() == []


@ray.remote(num_cpus=0)
class FrozenGenerator:
    """generator-0 whose engine froze under an evaluation: the call never returns."""

    def evaluate_task(self, *args):
        time.sleep(3600)


@ray.remote(num_cpus=0)
class PoolAfterTraining:
    """The controller after training as an evaluation's wait meets it: the second check's
    probe finds generator-0 frozen and kills it (GeneratorPool._check: test_pool), and
    none replaces it (training is over)."""

    def __init__(self, gen=None):
        self.gen, self.checks = gen or FrozenGenerator.remote(), 0

    def generator(self, name: str):
        if self.gen is None:
            raise RuntimeError(
                f"{name} is not running (training has ended, or it failed and was not replaced)"
            )
        return self.gen

    def check(self) -> int:
        self.checks += 1
        if self.checks == 2:
            ray.kill(self.gen)
            self.gen = None
        return 0

    def checked(self) -> int:
        return self.checks


@pytest.mark.parametrize("path", ["run", "collect"])
def test_an_evaluation_waiting_on_a_frozen_generator_0_ends(ray_session, small_cfg, monkeypatch, path):
    """A waited evaluation (the final ones, promotion matches, the supervised stage's end)
    checks the pool while it waits, so the pool's probe can fail a frozen generator-0 and
    the wait ends with the pool's error; before, it waited on the call for ever (nothing
    else checked the pool meanwhile, and after training nothing did at all)."""
    monkeypatch.setattr(driver, "WAIT_SLICE_S", 0.2)
    pool = PoolAfterTraining.remote()
    evals = driver.EvalQueue(small_cfg, None, pool, None, driver.Console(None), None)
    outcome = []

    def evaluate():
        try:
            if path == "run":
                evals.run("evaluate_task", {})
            else:
                evals.pending.append(
                    (0, "eval", {}, ("evaluate_task", ({},)), evals.call("evaluate_task", {}))
                )
                evals.collect(0.0, wait=True)
        except Exception as err:  # the pool's, through Ray
            outcome.append(err)

    waiting = threading.Thread(target=evaluate, daemon=True)
    waiting.start()
    waiting.join(60)
    assert not waiting.is_alive(), "the evaluation still waits on the frozen generator-0"
    assert "generator-0 is not running" in str(outcome[0])
    assert ray.get(pool.checked.remote()) >= 2
    ray.kill(pool)


def test_an_evaluation_whose_controller_is_lost_says_so(ray_session, small_cfg, monkeypatch):
    """The pool's check failing because the controller died is not generator-0 lost under
    the evaluation (whose error a waited evaluation answers by evaluating again)."""
    monkeypatch.setattr(driver, "WAIT_SLICE_S", 0.2)
    frozen = FrozenGenerator.remote()  # this process's: it outlives the controller
    pool = PoolAfterTraining.remote(frozen)
    evals = driver.EvalQueue(small_cfg, None, pool, None, driver.Console(None), None)
    evals.generator = frozen
    ray.kill(pool)
    with pytest.raises(RuntimeError, match="the controller was lost while an evaluation waited"):
        evals.run("evaluate_task", {})
    ray.kill(frozen)


def spy_on_metrics_close(monkeypatch) -> list:
    """A list that gets an entry each time a MetricsLog is closed."""
    closed, close = [], driver.MetricsLog.close

    def spy(self):
        closed.append(True)
        close(self)

    monkeypatch.setattr(driver.MetricsLog, "close", spy)
    return closed


def test_a_run_that_fails_before_its_program_is_built_closes_its_metrics_log(
    small_cfg, tmp_path, monkeypatch
):
    """A failure before any actor exists (here: making the initial model) closes the
    metrics log all the same, and is what the caller sees (no error of the clean-up's)."""

    def fail(*args):
        raise RuntimeError("no model")

    closed = spy_on_metrics_close(monkeypatch)
    monkeypatch.setattr(driver, "initial_model", fail)
    with pytest.raises(RuntimeError, match="no model"):
        driver.Run(small_cfg, tmp_path, None)
    assert closed == [True]


def test_run_cli_rejects_an_unknown_field_naming_it():
    out = subprocess.run(
        [sys.executable, "-m", "selfplay.cli", "run", "configs/tictactoe.yaml", "--set", "learner.lrr=1"],
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 2
    assert "learner.lrr: unknown field" in out.stderr


def test_the_reward_model_self_play_dpo_pipeline_killed_mid_stage_resumes_there_and_promotes(
    ray_session, small_cfg, tmp_path
):
    """The pipeline in one run: a reward model trained first (the judge, with a rule), the
    supervised stage, whose policy becomes the first snapshot; then the policy's and the
    snapshot's replies are judged into DPO pairs (written for other trainers), with
    promotion matches on held-out prompts every 2 steps. Its driver (`selfplay run CONFIG
    --name NAME`, a process of its own on the session's Ray) is killed (SIGKILL: nothing
    runs on the way out) once step 6, in the middle of self-play, is checkpointed; the same
    command resumes it there (the reward model kept, not retrained; step 6's evaluation,
    lost with the driver, measured again) and ends at 8, where the final policy meets the
    supervised one."""
    cfg = task_run_config(
        small_cfg,
        tmp_path,
        steps=2,  # a checkpoint every 2 steps
        max_response_tokens=8,
        reference=True,
        task=TaskConfig(
            name="describe",
            # judged by a rule and by a reward model the run trains first (on brevity labels)
            principles=[{"name": "sentiment"}, {"name": "reward_model"}],
            gold=[{"name": "no_repetition"}],  # the reward-hacking monitor watches it too
            versus="snapshot",
            samples_per_prompt=2,
            prompts_per_wave=16,
            held_out=4,
            eval_samples=1,
        ),
        builder=BuilderConfig(rows="compete"),
        sft=SftConfig(steps=2, examples=40),
        reward_model=RewardModelConfig(
            pairs=64, held_out_pairs=16, epochs=1, labeler=[{"name": "brevity", "params": {"max_words": 5}}]
        ),
        league=dataclasses.replace(
            small_cfg.league,
            enabled=True,
            promote_every=2,
            promote_games=8,
            final_match=12,
            max_live_opponents=1,
        ),
        acceptance={"describe/vs_first/score": ">= 0", "league/snapshots/promotions": ">= 0"},
    )
    # evaluated at step 6, queued just before that step's checkpoint: the kill loses it
    cfg = dataclasses.replace(cfg, eval=dataclasses.replace(cfg.eval, every_steps=6))
    config, run_dir, log = tmp_path / "pipeline.yaml", tmp_path / "pipeline", tmp_path / "killed.log"
    save_config(dataclasses.replace(cfg, total_steps=100), config)  # far more steps than it gets
    address = ray_session.get_runtime_context().gcs_address
    with open(log, "w") as out:
        killed = subprocess.Popen(
            [sys.executable, "-m", "selfplay.cli", "run", str(config), "--name", "pipeline"]
            + ["--set", f"ray.address={address}"],
            stdout=out,
            stderr=subprocess.STDOUT,
        )

    def named_actors():  # the run's (learner, generators, ...), in its own namespace
        listed = ray_session.util.list_named_actors(all_namespaces=True)
        return [a["name"] for a in listed if a["namespace"] == "pipeline"]

    def step_6_checkpointed() -> bool:
        assert killed.poll() is None, f"the driver ended before step 6: {log.read_text()[-3000:]}"
        checkpoint = driver.latest_checkpoint(run_dir)
        return checkpoint is not None and checkpoint.name == "step_0000006"

    try:
        wait_for(
            step_6_checkpointed, 300, lambda: f"a step-6 checkpoint ({log.read_text()[-3000:]})", poll=0.1
        )
        assert named_actors()
    finally:
        killed.kill()
        killed.wait()
    assert driver.latest_checkpoint(run_dir).name == "step_0000006"
    assert set(json.loads((run_dir / "summary.json").read_text())) == {"before"}  # kept from the start
    logged = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    assert 4 in {m["step"] for m in logged if m["name"] == "league/vs_previous_games"}
    assert 6 not in {m["step"] for m in logged if m["name"].startswith("eval/")}  # lost with the driver
    trained_at = (run_dir / "reward_model" / reward_model.INFO).stat().st_mtime_ns
    # Ray ends a job's actors with its driver
    wait_for(
        lambda: not named_actors(),
        30,
        lambda: f"the killed driver's actors gone ({named_actors()})",
        poll=0.1,
    )
    # the command again, with a nearer end (on the test's Ray, in its namespace)
    assert driver.train(dataclasses.replace(cfg, total_steps=8), name="pipeline") == run_dir
    assert (run_dir / "reward_model" / reward_model.INFO).stat().st_mtime_ns == trained_at
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 8 and set(summary["before"]) == {"describe/held_out"}
    final = summary["after"]["describe/vs_first"]
    assert final["member"] == "snap-0" and final["games"] == 12
    assert final["score"] == pytest.approx(final["win"] + final["draw"] / 2)
    assert summary["acceptance"]["describe/vs_first/score"]["value"] == final["score"]
    promotions = summary["after"]["league/snapshots"]["promotions"]
    assert promotions == summary["league"]["league/members"] - 1
    # the final match's games are in the final checkpoint's league too (written before them)
    saved = LeagueState.load(driver.latest_checkpoint(run_dir) / "league.json")
    assert saved.learner_rating == pytest.approx(summary["league"]["league/learner_elo"])
    # DPO's reference at the end (saved with the step-8 checkpoint, after that step's promotion
    # match) is the newest snapshot (league.reference_every 1), not the supervised policy
    reference = load_file(driver.latest_checkpoint(run_dir) / REFERENCE)
    members = {p.parent.name: load_file(p) for p in (run_dir / "league").glob("snap-*/model.safetensors")}
    alike = [name for name, w in members.items() if all(torch.equal(reference[k], w[k]) for k in w)]
    assert alike == [f"snap-{promotions}"]  # that snapshot's weights, and no other's
    metrics = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    matches = {m["step"]: m["value"] for m in metrics if m["name"] == "league/vs_previous_games"}
    assert matches == {4: 8, 6: 8, 8: 8}  # not during, nor at the end of, the supervised stage
    pairs = [(m["step"], m["value"]) for m in metrics if m["name"] == "pairs"]
    assert [s for s, _ in pairs] == [3, 4, 5, 6, 7, 8] and all(n > 0 for _, n in pairs)  # each step once
    snapshot_eval = {m["step"] for m in metrics if m["name"] == "snapshot/snap-0/describe/held_out/score"}
    assert snapshot_eval == {2}  # the first snapshot is the supervised policy
    monitor = summary["after"]["describe/monitor"]
    gold = {m["step"]: m["value"] for m in metrics if m["name"] == "eval/describe/held_out/gold_score"}
    alarms = {m["step"]: m["value"] for m in metrics if m["name"] == "monitor/alarm"}
    # before, after the supervised stage, at step 6 (lost at the kill, measured on resume), at the end
    assert set(gold) == {0, 2, 6, 8}
    assert set(alarms) == {2, 6, 8}  # watched from the supervised policy on
    assert monitor["alarms"] == sum(alarms.values()) and monitor["gold_peak"] == max(
        gold[2], gold[6], gold[8]
    )
    assert monitor["gold_final"] == gold[8]
    rm = summary["after"]["reward_model/held_out"]
    assert rm["pairs"] == reward_model.complete(run_dir / "reward_model")["held_out_pairs"] > 0
    written = pq.read_table(run_dir / "preferences")
    assert written.num_rows > 0 and set(written["method"].to_pylist()) == {"compete"}
    # the verifier judged every reply by the run's reward model
    assert all(0 < dict(s)["reward_model"] < 1 for s in written["chosen_scores"].to_pylist())
    assert all(p.endswith(":") and len(p.split(", ")) == 3 for p in written["prompt"].to_pylist())
    assert all(
        c.strip() != r.strip() for c, r in zip(written["chosen"].to_pylist(), written["rejected"].to_pylist())
    )


def test_a_self_rewarding_run_teaches_the_judge_role_then_trains_on_its_own_verdicts(
    ray_session, small_cfg, tmp_path
):
    """Self-rewarding on real engines: the supervised stage teaches the task and the judge
    role together; then the newest snapshot (the supervised policy, then each promoted one:
    task.judge_weights snapshot, from an opponent engine) marks each of the policy's replies
    in the judge role, the verifier rewards those marks (keeping the rule judge's total
    beside them), the builder pairs each prompt's best reply with its worst, and DPO trains
    on them against a reference that follows the policy, beside judge rows rehearsed in
    every batch; every evaluation measures the judge against the rules."""
    cfg = task_run_config(
        small_cfg,
        tmp_path,
        steps=30,
        max_response_tokens=12,
        reference=True,
        task=TaskConfig(
            name="describe",
            principles=[{"name": "sentiment"}, {"name": "no_profanity", "hard": True}],  # two marks
            gold=[{"name": "sentiment"}, {"name": "no_profanity", "hard": True}],  # the monitor's
            judge="self",
            judge_samples=2,  # sampled verdicts, averaged: few ties between a prompt's samples
            judge_temperature=1.0,
            judge_weights="snapshot",
            samples_per_prompt=4,
            prompts_per_wave=16,
            held_out=4,
            eval_samples=2,
        ),
        builder=BuilderConfig(rows="best_worst"),
        sft=SftConfig(steps=26, examples=40, judge_examples=400, lr=3e-3, judge_replay=0.25),
        acceptance={
            "describe/held_out/judge_agreement": ">= 0",
            "describe/held_out/score_gain_over_sft": ">= -1",
        },
    )
    # a judge that never learnt to mark would starve the learner: end by the clock, then fail
    cfg = dataclasses.replace(
        cfg,
        time_limit_min=4.0,
        learner=dataclasses.replace(cfg.learner, ref_refresh_every=2),
        league=dataclasses.replace(
            small_cfg.league, enabled=True, promote_every=2, promote_games=4, max_live_opponents=1
        ),
    )
    run_dir = driver.train(cfg)
    summary = json.loads((run_dir / "summary.json").read_text())
    assert summary["steps"] == 30
    after, after_sft = summary["after"]["describe/held_out"], summary["after_sft"]["describe/held_out"]
    assert after_sft["judge_rated"] > 0.5  # the role was learnt: its verdicts read as marks
    assert after["judge_decided"] <= 4 * 3  # 4 problems, 3 replies each, every pair of them
    assert after["score_gain_over_sft"] == pytest.approx(after["score"] - after_sft["score"])
    # the monitor follows the policy's marks of its own replies against the rules' (the gold)
    assert after["gold_score"] == pytest.approx(after["score"])
    monitor = summary["after"]["describe/monitor"]
    assert monitor["proxy_final"] == pytest.approx(after["judge_score"]) and monitor["alarms"] >= 0
    metrics = pq.read_table(run_dir / "metrics.parquet").to_pylist()
    pairs = {m["step"]: m["value"] for m in metrics if m["name"] == "pairs"}
    assert all(pairs[s] > 0 for s in (27, 28, 29, 30))  # DPO on the policy's own verdicts
    sft_rows = {m["step"]: m["value"] for m in metrics if m["name"] == "sft_rows"}
    assert all(sft_rows[s] == 8 for s in (27, 28, 29, 30))  # and a quarter rehearsing the judge role
    matches = {m["step"]: m["value"] for m in metrics if m["name"] == "league/vs_previous_games"}
    assert matches == {28: 4, 30: 4}  # promotion matches after the stage: the judge's next weights
    assert summary["league"]["league/members"] >= 1  # the supervised policy judged first
    task = {m["name"]: m["value"] for m in metrics if m["name"].startswith("task/pairs_rules")}
    assert task["task/pairs_rules_decided"] >= task["task/pairs_rules_agree"] >= 0
    written = pq.read_table(run_dir / "preferences")
    assert set(written["method"].to_pylist()) == {"best_worst"}
    for scores in written["chosen_scores"].to_pylist():  # the policy's verdict and the rules' total
        assert {"self_judge", "rules", "sentiment", "no_profanity"} <= set(dict(scores))
