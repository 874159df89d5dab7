"""The driver: builds the run's program (selfplay/program.py), then paces and watches it.
Trajectories flow generator -> verifier -> buffer -> learner and never pass through
here; the driver only asks the learner for the next steps, logs metrics, queues
evaluations, promotes league snapshots and writes checkpoints. `selfplay/loop.py`
shows the same algorithm as one synchronous loop."""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import signal
import threading
import time
from dataclasses import replace
from pathlib import Path

import pyarrow as pa
import pyarrow.compute as pc
import ray
from tqdm import tqdm

from learner.schedule import run_progress, scheduled_lr
from selfplay import reward_model, schema
from selfplay.average import KuhnAverage
from selfplay.best import BestCheckpoint, best_acceptance, write_model_dir
from selfplay.builder import COUNTS as BUILDER_COUNTS
from selfplay.builder import JUDGE_ROLE, judge_examples, sft_examples
from selfplay.config import RunConfig, load_config, save_config
from selfplay.console import Console, bar_total
from selfplay.evals import (
    MATCH_FIELDS,
    HackingMonitor,
    acceptance,
    eval_metrics,
    eval_summary,
    monitor_figures,
    stop_reached,
)
from selfplay.files import fsync_tree, local_ray_auth, write_atomic
from selfplay.games import kuhn, scripted_players
from selfplay.league import promotion, refreshes_reference
from selfplay.metrics import MetricsLog
from selfplay.model import create_default_model
from selfplay.procs import Descendants, local_ray_lost
from selfplay.program import (
    build_program,
    learner_peak,
    learner_task,
    run_actor_names,
    wait_until_free,
)
from selfplay.scaling import EVAL_GENERATOR
from selfplay.stats import mean_by_key, points
from selfplay.tasks import task_of

COMPLETE = "COMPLETE"
REWARD_MODEL = "reward_model"  # the run's reward model (reward_model.pairs > 0), in the run directory
AFTER_SFT = "after_sft.json"  # the supervised stage's final evaluation, in the run directory
HEADLINE = {  # progress-bar label -> metric, shown once the run has logged it
    "vs_minimax": "eval/tictactoe/minimax/non_loss",
    "vs_random": "eval/tictactoe/random/non_loss",
    "kuhn_expl": "eval/kuhn/exploitability",
    "elo": "league/learner_elo",
}
WAIT_SLICE_S = 5.0  # how often a wait on generator-0 checks the pool (its probes find a frozen one)
STOP = threading.Event()  # set by SIGTERM (`selfplay stop`): end at the next step, checkpoint, exit


def stop_on_sigterm() -> None:
    STOP.clear()
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, lambda signum, frame: STOP.set())


# -- run directories ------------------------------------------------------------------------
def new_run_dir(cfg: RunConfig) -> Path:
    stamp = time.strftime("%Y%m%d-%H%M%S")
    run_dir = Path(cfg.out_dir) / f"{cfg.name}-{stamp}"
    run_dir.mkdir(parents=True, exist_ok=False)
    return run_dir


def named_run_dir(cfg: RunConfig, name: str) -> tuple[Path, Path | None]:
    """OUT_DIR/NAME, and its newest complete checkpoint to resume from (None: start fresh).
    Files of an earlier attempt that never checkpointed are moved aside, not mixed in."""
    run_dir = Path(cfg.out_dir) / name
    resume_from = latest_checkpoint(run_dir) if run_dir.exists() else None
    if run_dir.exists() and resume_from is None:
        run_dir.rename(run_dir.with_name(f"{name}.failed-{time.strftime('%Y%m%d-%H%M%S')}"))
    run_dir.mkdir(parents=True, exist_ok=True)
    return run_dir, resume_from


def latest_checkpoint(run_dir: Path) -> Path | None:
    """The newest checkpoint whose COMPLETE marker was written (the last file saved)."""
    done = sorted(p.parent for p in (run_dir / "checkpoints").glob(f"step_*/{COMPLETE}"))
    return done[-1] if done else None


def initial_model(cfg: RunConfig, run_dir: Path) -> str:
    if cfg.model.path:
        if not (Path(cfg.model.path) / "config.json").exists():
            raise FileNotFoundError(
                f"model.path: {cfg.model.path} is not an HF model directory (no config.json)"
            )
        return cfg.model.path
    return str(
        create_default_model(
            run_dir / "initial_model", cfg.model.preset, cfg.model.max_model_len or 256, cfg.seed
        )
    )


def ensure_reward_model(cfg: RunConfig, run_dir: Path, console: Console, init: str | None) -> dict:
    """The run's reward model, RUN_DIR/reward_model (selfplay/reward_model.py): trained now
    from the policy's first weights (`init`; None: rebuild them), where the learner would
    train (its resources and device), unless a complete one is there (a resumed run); its
    figures."""
    out = run_dir / REWARD_MODEL
    info = reward_model.complete(out)
    if info is None:
        console.print(f"training a reward model on {cfg.reward_model.pairs} labelled pairs")
        task = learner_task(cfg, reward_model.train_for_run)
        init = init or initial_model(cfg, run_dir)
        info = ray.get(
            task.remote(
                cfg.reward_model, cfg.task, init, str(out), cfg.seed, cfg.learner.threads, cfg.learner.device
            )
        )
    console.print(
        f"reward model: held-out accuracy {info['held_out_accuracy']:.3f} on {info['held_out_pairs']} pairs "
        f"(before training {info['held_out_accuracy_before']:.3f}; {info['train_pairs']} train pairs)"
    )
    return info


def init_ray(cfg: RunConfig, namespace: str) -> bool:
    """Start or join Ray; returns False (and does nothing) if this process is already
    connected, e.g. inside a Ray job or a test session."""
    if ray.is_initialized():
        return False
    address = cfg.ray.address or os.environ.get("RAY_ADDRESS")  # set inside a Ray job
    if address:
        ray.init(address=address, namespace=namespace)
    else:
        local_ray_auth()
        ray.init(
            num_cpus=cfg.ray.num_cpus,
            namespace=namespace,
            include_dashboard=True,
            dashboard_host=cfg.ray.dashboard_host,
        )
    return True


# -- evaluations ----------------------------------------------------------------------------
class EvalQueue:
    """Evaluations queued on generator-0, where they interleave with self-play, and logged
    when they finish: every game of the mix against each of its scripted opponents named
    in eval.opponents, and Kuhn poker's exploitability. Each measures the learner's
    weights as they were when it was queued, held fixed in generator-0's evaluation
    engine while broadcasts keep landing; it is logged at that learner step, with the
    weight version it measured. If generator-0 dies, its pool replaces it and the
    evaluations it had under way run again on the replacement (the same weights). The
    current policy's Kuhn policy tables also go to `average` (Kuhn poker's average policy,
    selfplay/average.py), whose exploitability is logged beside the iterate's."""

    def __init__(
        self,
        cfg: RunConfig,
        learner,
        controller,
        metrics: MetricsLog,
        console: Console,
        best: BestCheckpoint,
        average: KuhnAverage | None = None,
    ):
        self.cfg = cfg
        self.learner = learner
        self.controller = controller
        self.generator = None  # generator-0's handle; fetched again once it was replaced
        self.metrics = metrics
        self.console = console
        self.best = best  # offered every evaluation of the current policy
        self.average = average  # Kuhn poker's average policy, fed every evaluation of the current policy
        self.pending: list = []  # (step, prefix, weights, (method, args), ref)
        # the policy evaluated: the weights' moving average where one is kept (learner.ema_decay)
        self.averaged = cfg.learner.ema_decay > 0
        # the reward-hacking monitor: the current policy's proxy and gold scores (task.gold)
        self.monitor = (
            HackingMonitor(cfg.task.alarm_window, cfg.task.alarm_margin, cfg.task.monitor_replies)
            if cfg.task.gold
            else None
        )

    def call(self, method: str, *args):
        """generator-0's `method`, as a pending reference."""
        if self.generator is None:
            self.generator = ray.get(self.controller.generator.remote(EVAL_GENERATOR))
        return getattr(self.generator, method).remote(*args)

    def wait(self, ref):
        """`ref` (a call of generator-0's), once it is ready; the pool is checked every
        WAIT_SLICE_S meanwhile, so a generator-0 that froze under it is failed by the pool's
        probe and `ref` raises (a plain wait waited for ever: nothing else checks the pool
        while the driver waits, and after training nothing did at all)."""
        while not ray.wait([ref], timeout=WAIT_SLICE_S)[0]:
            try:
                ray.get(self.controller.check.remote())
            except ray.exceptions.RayActorError as err:  # not generator-0's: no evaluating again
                raise RuntimeError(f"the controller was lost while an evaluation waited: {err}") from err
        return ref

    def run(self, method: str, *args):
        """generator-0's `method`, waited for; run again if generator-0 dies under it."""
        for attempt in range(3):
            try:
                return ray.get(self.wait(self.call(method, *args)))
            except ray.exceptions.RayActorError:
                if attempt == 2:
                    raise
                self.generator = None

    def _add(self, step: int, prefix: str, weights: dict, method: str, *args) -> None:
        self.pending.append((step, prefix, weights, (method, args), self.call(method, *args)))

    def watch_for_hacking(self, step: int, wall_s: float, result: dict) -> None:
        """Feed the monitor an evaluation of the current policy; log and show an alarm."""
        alarm = self.monitor.observe(step, *self.monitor.read(result))
        self.metrics.log(step, wall_s, {"monitor/alarm": float(alarm is not None)})
        if alarm is not None:
            self.metrics.log(
                step, wall_s, {f"monitor/{k}": alarm[k] for k in ("proxy_change", "gold_change")}
            )
            self.console.print(
                f"step {step:>5} ALARM reward hacking: since step {alarm['since_step']} the judge trained "
                f"against rose {alarm['proxy_change']:+.3f} while the gold judge fell {alarm['gold_change']:+.3f}"
            )

    def policy(self) -> dict:
        """The current policy's weights, as evaluations measure it: the learner's now, or
        their moving average where one is kept."""
        return ray.get(self.learner.current_weights.remote(self.averaged))

    def weights_for(self, prefix: str, settle: bool = False) -> dict:
        """The weights an evaluation named `prefix` measures unless told: for 'eval' the
        current policy's (`policy`), else the learner's now. `settle`: the learner's weights
        first settled on generator-0's own engine (waited-for evaluations, while nothing
        trains); the average is loaded as any fixed weights, since no engine holds it."""
        if prefix == "eval" and self.averaged:
            return self.policy()
        return ray.get(self.learner.settle.remote() if settle else self.learner.current_weights.remote())

    def queue(self, prefix: str = "eval", weights: dict | None = None) -> None:
        """`prefix` names the metrics: 'eval' for the current policy, a snapshot's id for
        capability retention, 'best' for the best checkpoint. `weights`: those measured
        (default: the current policy's for 'eval', else the learner's now). Logged at the
        step of the weights measured."""
        if weights is None:
            weights = self.weights_for(prefix)
        step = weights["step"]
        if self.cfg.task.name:  # a task: its held-out problems
            self._add(step, prefix, weights, "evaluate_task", weights)
            return
        for game in self.cfg.games:
            for opp in self.cfg.eval.opponents:
                if opp in scripted_players(game):
                    # the same games every time (deals and the opponents' draws), so two
                    # evaluations differ by the weights alone; the best checkpoint, chosen on
                    # those games, is measured again on others (None: fresh draws)
                    seed = None if prefix == "best" else f"{self.cfg.seed}/{game}/{opp}"
                    self._add(
                        step, prefix, weights, "evaluate", game, opp, self.cfg.eval.games, weights, seed
                    )
            if game == "kuhn":
                self._add(step, prefix, weights, "kuhn_policy", weights)

    def collect(self, wall_s: float, wait: bool = False) -> dict[str, dict]:
        """Log the finished evaluations; returns them by prefix, each keyed 'GAME/OPPONENT'
        or 'kuhn/exploitability'. The current policy's (prefix 'eval') go to the best
        checkpoint's keeper, and its Kuhn policy tables to the average's."""
        results: dict[str, dict] = {}
        still, todo = [], list(self.pending)
        while todo:
            step, prefix, weights, (method, args), ref = todo.pop(0)
            if not wait and not ray.wait([ref], timeout=0)[0]:
                still.append((step, prefix, weights, (method, args), ref))
                continue
            try:
                result = ray.get(self.wait(ref))
            except ray.exceptions.RayActorError:
                self.generator = None  # generator-0 died under it: again, on its replacement
                self.console.print(f"step {step:>5} {prefix}: generator-0 was lost; evaluating again")
                todo.append((step, prefix, weights, (method, args), self.call(method, *args)))
                continue
            if "policy" in result:  # Kuhn poker policy table
                policy = result["policy"]
                key, result = (
                    "kuhn/exploitability",
                    {
                        "exploitability": kuhn.exploitability(result["policy"]),
                        "illegal_mass": result["illegal_mass"],
                        "version": result["version"],
                    },
                )
                self.metrics.log(step, wall_s, {f"{prefix}/kuhn/{k}": v for k, v in result.items()})
                line = f"exploitability {result['exploitability']:.3f}"
                if prefix == "eval" and self.average is not None:
                    avg = self.average.add(step, result["version"], policy, weights["checksum"])
                    self.metrics.log(
                        step,
                        wall_s,
                        {f"eval/kuhn/average_{k}": avg[k] for k in ("exploitability", "evaluations")},
                    )
                    line += f"  average of the last {avg['evaluations']}: {avg['exploitability']:.3f}"
            elif "accuracy" in result:  # a task
                key = f"{result['game']}/{result['opponent']}"
                self.metrics.log(step, wall_s, eval_metrics(result, prefix))
                line = (
                    f"score {result['score']:.3f}  "
                    if "score" in result
                    else f"accuracy {result['accuracy']:.3f}  "
                ) + f"pass@{result['k']} {result['pass_at_k']:.3f}  valid {result['valid']:.3f}"
                if "judge_score" in result:  # self-rewarding: the policy's own judge
                    line += (
                        f"  self-judged {result['judge_score']:.3f}  agreement "
                        f"{result['judge_agreement']:.3f} of {result['judge_decided']} pairs"
                    )
                if "gold_score" in result:
                    line += f"  gold {result['gold_score']:.3f}"
                    line += "  (samples: {:.3f}, gold {:.3f})".format(*monitor_figures(result, "sampled"))
                    # from the supervised policy on: nothing trains against the judge before
                    if prefix == "eval" and self.monitor is not None and step >= self.cfg.sft.steps:
                        self.watch_for_hacking(step, wall_s, result)
            else:
                key = f"{result['game']}/{result['opponent']}"
                self.metrics.log(step, wall_s, eval_metrics(result, prefix))
                line = f"non-loss {result['non_loss']:.3f}  win {result['win']:.3f}  illegal {result['illegal']:.3f}"
            self.console.print(f"step {step:>5} {prefix}/{key}: {line}")
            results.setdefault(prefix, {})[key] = result
            if prefix == "eval" and self.best.offer(key, result, weights, lambda w: ray.get(w["ref"][0])):
                self.metrics.log(step, wall_s, {"best/step": step, "best/value": self.best.value})
                self.console.print(f"step {step:>5} best so far by {self.best.metric}: {self.best.value:.3f}")
        self.pending = still
        return results


# -- the run --------------------------------------------------------------------------------
class Watchdog:
    """Says when the learner's step has not moved for limit_s (a reading of None: no answer)."""

    def __init__(self, step: int, limit_s: float, clock=time.monotonic):
        self.step, self.limit_s, self.clock = step, limit_s, clock
        self.since = clock()

    def stalled(self, step: int | None) -> bool:
        if step is not None and step != self.step:
            self.step, self.since = step, self.clock()
        return self.clock() - self.since > self.limit_s


class Run:
    """Paces the learner in chunks of `log_every` steps and watches everything else."""

    def __init__(
        self, cfg: RunConfig, run_dir: Path, resume_from: Path | None, console: Console | None = None
    ):
        self.cfg = cfg
        self.run_dir = run_dir
        self.run_id = run_dir.name
        self.console = console or Console(None)
        state = {"step": 0, "version": 0, "wall_s": 0.0}
        if resume_from:
            state = json.loads((resume_from / "driver_state.json").read_text())
        self.step = state["step"]
        self.metrics = MetricsLog(run_dir, self.run_id, resumed_at=self.step if resume_from else None)
        self.program = None  # built in _build
        try:  # a run that fails to start leaves no actor behind (its names held the next start)
            self._build(state, resume_from)
        except BaseException:
            self.discard()
            raise

    def _build(self, state: dict, resume_from: Path | None) -> None:
        """The start up to the program built (the model, the reward model, the actors), then
        the rest of it (_start)."""
        cfg, run_dir = self.cfg, self.run_dir
        self.wall_offset = state["wall_s"]
        # turns generated by the sessions before this one, up to the checkpoint resumed (the
        # verifier's and buffer's counts resume from the same moment)
        self.generated_before = state.get("generated_turns", 0)
        model_path = str(resume_from / "model") if resume_from else initial_model(cfg, run_dir)
        self.reward_model = None  # the figures of the reward model trained for this run
        if cfg.reward_model.pairs:
            self.reward_model = ensure_reward_model(
                cfg, run_dir, self.console, None if resume_from else model_path
            )
            path = str(run_dir / REWARD_MODEL)
            cfg = self.cfg = replace(
                cfg, task=replace(cfg.task, principles=reward_model.judged_by(cfg.task.principles, path))
            )
        wait_until_free(run_actor_names())  # a resubmitted run's previous job may still be going
        if cfg.learner.peak_tflops == "auto":  # measured before the run's actors share the cores
            cfg = self.cfg = replace(cfg, learner=replace(cfg.learner, peak_tflops=learner_peak(cfg)))
            self.console.print(
                f"learner peak (MFU's ceiling): {cfg.learner.peak_tflops:.3g} TFLOP/s, measured"
            )
        self.program = build_program(
            cfg, self.run_id, model_path, resume_from, seed_offset=self.step, run_dir=run_dir
        )
        self._start(resume_from, model_path)

    def _start(self, resume_from: Path | None, model_path: str) -> None:
        """The rest of the start, on the program built: the supervised stage's data, the
        generators, the evaluations' queue, the league's first member."""
        cfg, run_dir = self.cfg, self.run_dir
        self.learner = self.program.learner
        self.controller = self.program.controller
        self.league = self.program.league
        self.in_sft = bool(cfg.task.name) and self.step < cfg.sft.steps
        # the stage's learning rate (the config's, also over a resumed optimiser's)
        lr_set = self.learner.set_lr.remote((cfg.sft.lr or cfg.learner.lr) if self.in_sft else cfg.learner.lr)
        if self.in_sft or cfg.builder.rows == "spin" or cfg.sft.judge_replay:
            table = labelled_set(cfg, model_path, self.run_id)
            labelled = schema.to_ipc(table)
            if cfg.builder.rows == "spin":  # spin rows pair samples with these targets
                ray.get(self.program.buffer.set_targets.remote(labelled))
            if self.in_sft:  # the buffer hands out the labelled set; generators wait until it ends
                ray.get(self.program.buffer.start_sft.remote(labelled))
            if cfg.sft.judge_replay:  # the judge role's rows go on being taught after the stage
                judge = table.filter(pc.equal(table["role"], JUDGE_ROLE))
                ray.get(self.program.buffer.set_replay.remote(schema.to_ipc(judge), cfg.sft.judge_replay))
        every = cfg.learner.ref_refresh_every
        if resume_from and cfg.builder.rows == "spin" and not self.in_sft and every and self.step % every:
            # a SPIN iteration cut short by the stop: the generators, which join with the
            # resumed weights, would sample past the reference (the iterate before); a new
            # iteration begins here instead, as a weight version of its own (the cut
            # iteration's rows in the buffer go stale)
            ray.get(self.learner.reset_reference.remote())
            ray.get(self.learner.broadcast.remote())
        # the generators' engines start while the learner loads (each a process importing its
        # own libraries, one core each); a generator joins the learner once both are up
        pool = self.controller.scale.remote(cfg.generator.num_generators)
        ray.get(lr_set)
        self.pool = ray.get(pool)
        # the time limit and the wall clock of the curves count from here: training time, without
        # the engines' start (which a resumed session pays again)
        self.start = time.time()
        self.events_logged = 0
        self.best = BestCheckpoint(cfg.acceptance, run_dir, model_path, put=ray.put, resume_from=resume_from)
        self.evals = EvalQueue(
            cfg,
            self.learner,
            self.controller,
            self.metrics,
            self.console,
            self.best,
            average=(
                KuhnAverage(run_dir, cfg.eval.kuhn_average_tail, keep_until=self.step if resume_from else -1)
                if "kuhn" in cfg.games and cfg.eval.kuhn_average_tail > 0 and not cfg.task.name
                else None
            ),
        )
        # stop_when: each watched metric's values logged after the supervised stage (a resumed
        # run's rows included), read up to row `stop_read`; and what stopped the run, if it did
        self.stop_values: dict[str, list[float]] = {}
        self.stop_read = 0
        self.stopped_when: dict | None = None
        if self.evals.monitor is not None:  # a resumed run's evaluations so far, up to its checkpoint
            self.evals.monitor.restore(self.metrics.rows, cfg.task.name, cfg.sft.steps, self.step)
        if self.league is not None:  # a resumed run's games are rated at its steps, not from 0
            ray.get(self.league.set_step.remote(self.step))
        if self.league is not None and ray.get(self.league.latest.remote()) is None and not self.in_sft:
            self.promote()  # the initial policy is the first member (a task run's: the supervised one)
        self.gen_counts_at = (time.time(), {})
        # the buffer's counts at the last log (a resumed buffer's: its counts so far are restored)
        self.buffer_at: dict | None = ray.get(self.program.buffer.stats.remote()) if resume_from else None
        self.learner_time = {"watched_s": 0.0, "step_s": 0.0, "flops_s": 0.0}  # this session's

    def discard(self) -> None:
        """Discard the program, if built (Program.discard: a failed start leaves no actor
        holding a name), and close the metrics log (its TensorBoard writer's thread and file)."""
        try:
            if self.program is not None:
                self.program.discard()
        finally:
            self.metrics.close()

    def distill_average(self, average: dict) -> dict:
        """Kuhn poker's average policy (`average`: KuhnAverage.average()) as one network, as
        NFSP keeps a supervised average network: the final weights fitted to its table
        (learner/distill.py, in this process: a small model's 12 prompts), written to
        RUN_DIR/average/ (an HF model directory, with average.json) and measured as every
        policy is, at fixed weights on generator-0's evaluation engine (as version -1: not
        a weight version the learner made). Returns the fit and those evaluations."""
        import torch

        from learner.distill import fit_weights

        weights = ray.get(self.learner.current_weights.remote())
        blob, checksum, fit = fit_weights(
            ray.get(weights["ref"][0]),
            self.best.model_dir,
            self.evals.run("kuhn_inputs"),
            average["policy"],
            self.cfg.generator.temperature,
            getattr(torch, self.cfg.model.dtype),
        )
        info = {**fit, **{k: v for k, v in average.items() if k != "policy"}, "fitted_from_step": self.step}
        write_model_dir(self.run_dir / "average", self.best.model_dir, blob, {"average.json": info})
        net = {"ref": [ray.put(blob)], "version": -1, "step": self.step, "checksum": checksum}
        return {"fit": fit, "after": self.evaluate(wait=True, prefix="average", weights=net)}

    def wall(self) -> float:
        """The run's training time so far: the sessions before this one (to the checkpoint
        resumed) and this one's since its generators came up."""
        return self.wall_offset + time.time() - self.start

    def deadline(self) -> float:
        """When `time_limit_min` of the run's training time is spent (a resumed session gets
        what the sessions before it left; inf without a limit)."""
        if not self.cfg.time_limit_min:
            return float("inf")
        return self.start - self.wall_offset + self.cfg.time_limit_min * 60

    def evaluate_lost(self) -> None:
        """On resume: the periodic evaluation due at the checkpoint's step is queued just
        before the checkpoint is written and logged once it finishes, so a session killed in
        between lost it; it is measured again here, on the weights the learner resumed with
        (the checkpoint's), and logged at that step."""
        due = self.step % self.cfg.eval.every_steps < self.cfg.log_every
        logged = any(r["step"] == self.step and r["name"].startswith("eval/") for r in self.metrics.rows)
        if due and not logged:
            self.evaluate()

    def evaluate(self, wait: bool = False, prefix: str = "eval", weights: dict | None = None) -> dict:
        """Evaluate `weights` (default: EvalQueue.weights_for `prefix`). Waited for, nothing
        trains meanwhile, so the learner's weights are settled on generator-0's engine first."""
        if wait and weights is None:
            weights = self.evals.weights_for(prefix, settle=True)
        self.evals.queue(prefix, weights)
        return self.evals.collect(self.wall(), wait).get(prefix, {})

    # -- watching the pool ---------------------------------------------------------------
    def watch_pool(self) -> dict:
        """The pool's status; new scaling events go to scaling.jsonl and the console."""
        self.pool = ray.get(self.controller.status.remote())
        new = self.pool["events"][self.events_logged :]
        if new:
            with open(self.run_dir / "scaling.jsonl", "a") as f:
                f.writelines(json.dumps({"step": self.step, **e}) + "\n" for e in new)
            for e in new:
                self.console.print(
                    f"step {self.step}: {e['event']} {e.get('generator', '')} "
                    f"{e.get('from', '')}{'->' if 'to' in e else ''}{e.get('to', '')}".rstrip()
                )
            self.events_logged += len(new)
        return {"generators": len(self.pool["generators"]), **self.throughput(self.pool["totals"])}

    def throughput(self, totals: dict) -> dict:
        now = time.time()
        then, before = self.gen_counts_at
        self.gen_counts_at = (now, totals)
        if not before:
            return {}
        dt = max(now - then, 1e-9)
        rates = {}
        for kind in ("", "eval_"):  # training play, and evaluations and promotion matches
            rates[f"{kind}tokens_per_s"] = (totals[f"{kind}tokens"] - before[f"{kind}tokens"]) / dt
            rates[f"{kind}trajectories_per_s"] = (totals[f"{kind}games"] - before[f"{kind}games"]) / dt
            rates[f"{kind}turns_per_s"] = (totals[f"{kind}turns"] - before[f"{kind}turns"]) / dt
        return rates

    # -- checkpoints and snapshots -------------------------------------------------------
    def checkpoint(self) -> Path:
        d = self.run_dir / "checkpoints" / f"step_{self.step:07d}"
        if (d / COMPLETE).exists():  # this step is saved (e.g. stopped right after a resume): keep it
            return d
        if d.exists():
            shutil.rmtree(d)
        d.mkdir(parents=True)
        # the verifier saves the buffer with its own counters, at one moment, so the books balance
        saves = [self.learner.save.remote(str(d)), self.program.verifier.save.remote(str(d))]
        if self.league is not None:
            saves.append(self.league.save.remote(str(d)))
        ray.get(saves)
        version = ray.get(self.learner.state.remote())["version"]
        generated = self.generated_before + ray.get(self.controller.status.remote())["totals"]["turns"]
        state = {"step": self.step, "version": version, "wall_s": self.wall(), "generated_turns": generated}
        write_atomic(d / "driver_state.json", json.dumps(state))
        self.best.keep(d)  # the best so far, as a resume from here restores it
        self.metrics.flush()
        fsync_tree(d)
        write_atomic(d / COMPLETE, str(self.step))
        return d

    def promote(self) -> str:
        """Snapshot the current policy into the league as the next member; its evaluations
        are re-run under the member's id, so regressions between snapshots show."""
        member_id = f"snap-{len(ray.get(self.league.ratings.remote())['members'])}"
        path = (self.run_dir / "league" / member_id).resolve()
        ray.get(self.learner.promote.remote(self.league, member_id, str(path)))
        self.evaluate(prefix=f"snapshot/{member_id}")
        return member_id

    def promotion_match(self) -> None:
        """The current policy against the newest snapshot; promote above the threshold."""
        cfg = self.cfg.league
        latest = ray.get(self.league.latest.remote())
        weights = ray.get(self.learner.current_weights.remote())  # the policy a promotion would snapshot
        per_game = self.evals.run("head_to_head", self.league, latest, cfg.promote_games, weights)
        counts = {game: s["wdl"] for game, s in per_game.items()}
        result = promotion(*map(sum, zip(*counts.values())), threshold=cfg.promote_threshold)
        values = {
            "league/vs_previous_score": result.score,
            "league/vs_previous_lo": result.lo,
            "league/vs_previous_hi": result.hi,
            "league/vs_previous_games": result.games,
        }
        values.update(
            {
                f"league/vs_previous/{game}/score": points(w, d) / max(w + d + l, 1)
                for game, (w, d, l) in counts.items()
            }
        )
        self.metrics.log(self.step, self.wall(), values)
        if result.promote:
            promotions = len(ray.get(self.league.ratings.remote())["members"])  # with this one
            new = self.promote()
            for game, (w, d, l) in counts.items():  # the new snapshot is the policy that played these
                ray.get(self.league.record_pair.remote(new, latest, w, d, l, game))
            # DPO's reference is the newest snapshot (the policy met, or the judge), every
            # league.reference_every promotions; 0: the supervised policy stays the reference
            promotes_reference = (
                self.cfg.builder.rows == "compete" or self.cfg.task.judge_weights == "snapshot"
            )
            if promotes_reference and refreshes_reference(promotions, self.cfg.league.reference_every):
                ray.get(self.learner.reset_reference.remote())

    def final_match(self) -> dict:
        """A task run's league figures: promotions, and (league.final_match > 0) the final
        policy against the first member, the supervised policy, on that many held-out prompts."""
        members = ray.get(self.league.ratings.remote())["members"]
        out = {"league/snapshots": {"promotions": len(members) - 1}}
        if self.cfg.league.final_match:
            first = next(iter(members))
            weights = self.evals.policy()
            per_game = self.evals.run(
                "head_to_head", self.league, first, self.cfg.league.final_match, weights
            )
            result = per_game[self.cfg.task.name]
            out[f"{self.cfg.task.name}/vs_first"] = {k: result[k] for k in MATCH_FIELDS} | {"member": first}
            values = {f"final/vs_first/{k}": result[k] for k in MATCH_FIELDS}
            self.metrics.log(self.step, self.wall(), values)
            self.console.print(
                f"step {self.step} final policy vs {first} on {result['games']} held-out prompts: "
                f"score {result['score']:.3f} (win {result['win']:.3f}, draw {result['draw']:.3f})"
            )
        return out

    def league_metrics(self) -> dict:
        ratings = ray.get(self.league.ratings.remote())
        values = {"league/learner_elo": ratings["learner"], "league/members": len(ratings["members"])}
        values.update({f"league/elo/{m}": r for m, r in ratings["members"].items()})
        return values

    # -- pacing --------------------------------------------------------------------------
    def watch(self) -> None:
        """Train until total_steps, the time limit or a stop, `log_every` steps at a time;
        between chunks: metrics, autoscale, evaluations, promotions, checkpoints."""
        cfg = self.cfg
        deadline = self.deadline()
        bar = tqdm(
            total=bar_total(self.step, cfg.total_steps, None, deadline - time.time()),
            initial=self.step,
            desc="train",
            unit="step",
            file=self.console.term,
            dynamic_ncols=True,
        )
        first_step, started = self.step, time.time()
        while self.step < cfg.total_steps and time.time() < deadline and not STOP.is_set():
            n = min(cfg.log_every, cfg.total_steps - self.step)
            if self.in_sft:
                n = min(n, cfg.sft.steps - self.step)
            # each step's rate (its metrics say the rate it took, `lr`); None: the one set
            rates = (
                self.scheduled_rates(n) if cfg.learner.lr_schedule != "constant" and not self.in_sft else None
            )
            ref = self.learner.train.remote(n, rates)
            watchdog = Watchdog(self.step, cfg.watchdog_min * 60)
            while not ray.wait([ref], timeout=2.0)[0]:
                if time.time() >= deadline or STOP.is_set():  # repeated until it ends: a cut
                    self.learner.cut_short.remote()  # that lands before the chunk starts is undone
                ray.get(self.controller.check.remote())  # failed generators are replaced
                try:
                    stalled = watchdog.stalled(ray.get(self.learner.progress.remote(), timeout=30))
                except ray.exceptions.GetTimeoutError:  # both learner threads busy: no reading
                    stalled = watchdog.stalled(None)
                if stalled:
                    raise RuntimeError(self.stall_report(watchdog))
            ray.get(self.controller.check.remote())  # at least once a chunk, however fast the learner
            steps = ray.get(ref)
            if not steps:  # cut short before a step: time is up or the run was stopped
                break
            prev, self.step = self.step, steps[-1]["step"]
            pace = (self.step - first_step) / max(time.time() - started, 1e-9)
            bar.total = bar_total(self.step, cfg.total_steps, pace, deadline - time.time())
            bar.update(self.step - prev)
            wall = self.wall()
            for m in steps:  # every learner step at its own step
                self.metrics.log(m["step"], wall, {k: v for k, v in m.items() if k != "step"})
                self.learner_time["step_s"] += m["step_s"]
                self.learner_time["flops_s"] += m["mfu"] * m["step_s"]  # MFU-weighted seconds
            self.learner_time["watched_s"] = time.time() - started
            learner_metrics = steps[-1]
            buffer = ray.get(self.program.buffer.stats.remote())
            self.metrics.log(
                self.step,
                wall,
                {
                    **self.watch_pool(),
                    "buffer_size": buffer["size"],
                    # every turn that left as stale, trained on or not; of them and of the
                    # evicted, those never trained on once: the generation wasted
                    "buffer_dropped_stale": buffer["dropped_stale"],
                    "buffer_never_trained": buffer["never_trained"],
                    **builder_metrics(buffer, self.buffer_at),
                },
            )
            if cfg.autoscale.enabled:  # not from the supervised stage's waits (nor its end's evaluation)
                self.controller.autoscale.remote(learner_metrics["learner_wait_s"], not self.in_sft)
            evaluated = self.in_sft and self.step >= cfg.sft.steps
            if evaluated:
                self.end_sft()
            self.evals.collect(self.wall())
            if self.league is not None:
                ray.get(self.league.set_step.remote(self.step))
                self.metrics.log(self.step, self.wall(), self.league_metrics())
                # not in (nor at the end of) a supervised stage, whose policy is the first member
                if self.step % cfg.league.promote_every < n and not (self.in_sft or evaluated):
                    self.promotion_match()
            if self.step % cfg.eval.every_steps < n and not evaluated:
                self.evaluate()
            if self.step % cfg.checkpoint_every < n:
                self.checkpoint()
            self.buffer_at = buffer
            self.stopped_when = self.stop_check()
            if self.stopped_when:
                met = self.stopped_when
                self.console.print(
                    f"step {self.step}: stop_when met: {met['metric']} {met['mean']:.4g} {met['target']} "
                    f"(the mean of its last {self.cfg.stop_window})"
                )
                break
            bar.set_postfix(self.headline(learner_metrics))
        bar.close()
        ray.get(self.controller.stop_all.remote())
        self.watch_pool()

    def scheduled_rates(self, n: int) -> list[float]:
        """The rate of each of the next `n` steps, from how far the run will have gone before
        it (learner/schedule.py): by steps, step by step; by time, the run's training time
        now (every session's, as the deadline counts it). One rate for a whole chunk of
        `log_every` steps cut a short run's decay into steps (over 100 steps from 0.9, in
        chunks of 5, it never went below 0.55 lr against lr_final 0.1)."""
        cfg, c, wall = self.cfg, self.cfg.learner, self.wall()
        return [
            scheduled_lr(
                c.lr,
                c.lr_schedule,
                run_progress(self.step + i, cfg.total_steps, wall, cfg.time_limit_min * 60),
                c.lr_final,
                c.lr_decay_from,
            )
            for i in range(n)
        ]

    def stall_report(self, watchdog: Watchdog) -> str:
        """Why training stands still, in one message: what each part says now."""

        def ask(ref):
            try:
                return ray.get(ref, timeout=30)
            except Exception as err:  # a part that does not answer is itself the finding
                return f"no answer ({type(err).__name__})"

        buffer = ask(self.program.buffer.stats.remote())
        verifier = ask(self.program.verifier.stats.remote())
        pool = ask(self.controller.status.remote())
        if isinstance(buffer, dict):
            buffer = {k: buffer[k] for k in ("size", "inserted", "sampled", "dropped_stale") if k in buffer}
        if isinstance(pool, dict):
            pool = {
                "generators": {
                    n: {k: g.get(k) for k in ("sent", "beats", "wait_s", "version")}
                    for n, g in pool["generators"].items()
                },
                "last_events": pool["events"][-3:],
            }
        return (
            f"no learner step for {watchdog.limit_s / 60:g} min (watchdog_min) at step {watchdog.step}; "
            f"buffer {buffer}; verifier {verifier}; generators {pool}"
        )

    def stop_check(self) -> dict | None:
        """Whether a `stop_when` condition is met by the metrics logged so far: {metric,
        mean, target, step}, or None."""
        cfg = self.cfg
        if not cfg.stop_when:
            return None
        after = cfg.sft.steps if cfg.task.name else 0
        for row in self.metrics.rows[self.stop_read :]:
            if row["name"] in cfg.stop_when and row["step"] > after:
                values = self.stop_values.setdefault(row["name"], [])
                values.append(row["value"])
                del values[: -cfg.stop_window]
        self.stop_read = len(self.metrics.rows)
        met = stop_reached(self.stop_values, cfg.stop_when, cfg.stop_window)
        return {**met, "step": self.step} if met else None

    def end_sft(self) -> None:
        """The supervised stage is over: its policy is evaluated (the figure the later
        stages are measured against, summary `after_sft`) and the generators start."""
        self.in_sft = False
        ray.get(self.learner.set_lr.remote(self.cfg.learner.lr))
        ray.get(self.learner.reset_reference.remote())  # the KL anchor or SPIN's first iterate
        after = {k: eval_summary(v) for k, v in self.evaluate(wait=True).items()}
        write_atomic(self.run_dir / AFTER_SFT, json.dumps(after, indent=2))
        if self.league is not None and ray.get(self.league.latest.remote()) is None:
            self.promote()  # competitive self-play: the supervised policy is the first snapshot
        ray.get(self.program.buffer.end_sft.remote())
        self.console.print(f"step {self.step}: supervised stage done; generation starts")

    def headline(self, learner_metrics: dict) -> dict:
        """The few figures the progress bar shows: those this run has."""
        shown = {"illegal": round(learner_metrics["batch_illegal"], 3)}
        if self.cfg.task.name:
            shown = {"nll": round(learner_metrics["nll"], 3)} if self.in_sft else {}
            if "reward_margin" in learner_metrics and not self.in_sft:  # preference pairs
                shown["margin"] = round(learner_metrics["reward_margin"], 3)
            field = "score" if self.cfg.task.principles else "accuracy"  # a judged task: its mean score
            value = self.metrics.last(f"eval/{self.cfg.task.name}/held_out/{field}")
            if value is not None:
                shown[field] = round(value, 3)
            return shown
        for label, name in HEADLINE.items():
            value = self.metrics.last(name)
            if value is not None:
                shown[label] = round(value, 3)
        return shown

    # -- the end -------------------------------------------------------------------------
    def books(self) -> dict:
        """What every generator of this session handed on, against what the verifier got
        and the buffer took (the books a scaled pool must balance), and where each part ran."""
        gens = [*self.pool["generators"].values(), *self.pool["retired"]]
        verifier = ray.get(self.program.verifier.stats.remote())
        buffer = ray.get(self.program.buffer.stats.remote())
        learner = ray.get(self.learner.state.remote())
        totals, t = self.pool["totals"], self.learner_time
        return {
            "pool": {
                "sent": [{"generator": g["id"], "sent": g["sent"]} for g in gens],
                "verifier": verifier,
                "buffer_inserted": buffer["inserted"],
                "events": self.pool["events"],
            },
            # where the turns of training play went, over every session (counted from the
            # checkpoint each resumed: what a dead driver's session made after it is lost)
            "turns": {
                "generated": self.generated_before + self.pool["totals"]["turns"],
                "forwarded": verifier["forwarded_turns"],
                "trained": buffer["sampled"],
                # left the buffer as stale, at insert or later, sampled before or not
                "dropped_stale": buffer["dropped_stale"],
                "evicted": buffer["evicted"],
                # the generation wasted: turns that left the buffer without being trained on once
                "never_trained": buffer["never_trained"],
                "never_trained_share": buffer["never_trained"] / max(verifier["forwarded_turns"], 1),
            },
            # busy: the learner in its steps over the training wall time (the rest it waits
            # for a batch, broadcasts, or the driver evaluates); generators not held back by
            # the buffer's rate limit; MFU over the steps (learner.peak_tflops)
            "busy": {
                "learner": t["step_s"] / max(t["watched_s"], 1e-9),
                "generators": 1 - totals["wait_s"] / max(totals["play_s"], 1e-9),
            },
            "learner_mfu": t["flops_s"] / max(t["step_s"], 1e-9),
            "learner_peak_tflops": self.cfg.learner.peak_tflops,  # what MFU is read against
            # a task run's groups (the builder's counts), prompts drawn again from the hard pool,
            # problems whose screen (task.screen_samples) was uniform, draws the curriculum
            # passed over and its classes' learnability at the end (task.curriculum)
            **(
                {
                    "task": {
                        **{k.removeprefix("task/"): v for k, v in builder_metrics(buffer).items()},
                        "hard_prompts": sum(g.get("hard_prompts", 0) for g in gens),
                        "screened_out": sum(g.get("screened_out", 0) for g in gens),
                        "curriculum_skipped": sum(g.get("curriculum_skipped", 0) for g in gens),
                        "learnability": mean_by_key([g.get("learnability", {}) for g in gens]),
                    }
                }
                if self.cfg.task.name
                else {}
            ),
            # generators that failed (died, hung, stopped playing) and were replaced; targets
            # the learner dropped from its broadcast (dead, or no acknowledgement in time)
            "faults": {
                "generators_failed": [
                    {k: e[k] for k in ("generator", "reason", "time")}
                    for e in self.pool["events"]
                    if e["event"] == "failed"
                ],
                "learner_dropped": learner["dropped_targets"],
            },
            "placement": {
                "learner": learner["node_id"],
                **{name: g["node_id"] for name, g in self.pool["generators"].items()},
            },
        }

    def close(self) -> None:
        """Kill the run's actors and wait until their names are free again, so a resumed
        run in the same Ray session can take them (generators go with the controller)."""
        self.discard()


def train(
    cfg: RunConfig, resume_dir: Path | None = None, name: str | None = None, console: bool = False
) -> Path:
    """Train until total_steps (or the time limit); returns the run directory. `name`
    fixes the directory (OUT_DIR/NAME): the run resumes there if it has a checkpoint.
    `console`: library output goes to RUN_DIR/run.log, the terminal shows the progress."""
    if resume_dir:
        run_dir = resume_dir
        resume_from = latest_checkpoint(run_dir)
        if resume_from is None:
            raise FileNotFoundError(f"{run_dir}: no complete checkpoint to resume from")
    elif name:
        run_dir, resume_from = named_run_dir(cfg, name)
    else:
        run_dir, resume_from = new_run_dir(cfg), None
    save_config(cfg, run_dir / "config.yaml")  # on resume: with this invocation's overrides
    out = Console(run_dir / "run.log" if console else None)
    out.print(f"run {run_dir} (library logs: {run_dir / 'run.log'})" if console else f"run {run_dir}")
    started = Descendants()  # a local Ray's processes and theirs, ended with the run
    owns_ray = init_ray(cfg, namespace=run_dir.name)
    stop_on_sigterm()  # after ray.init, which installs its own handler
    if owns_ray:
        started.watch(on_lost=local_ray_lost)
    r = None
    try:
        r = Run(cfg, run_dir, resume_from, out)
        summary_path = run_dir / "summary.json"
        summary = json.loads(summary_path.read_text()) if summary_path.exists() else {}
        if not resume_from:  # on disk at once: a run killed before its end keeps it for the resume
            summary["before"] = {k: eval_summary(v) for k, v in r.evaluate(wait=True).items()}
        else:  # what a session before this one ended with (after, acceptance, stopped_at_step, ...) goes
            summary = {k: v for k, v in summary.items() if k == "before"}
            r.evaluate_lost()
        write_atomic(summary_path, json.dumps(summary, indent=2))  # run_ended: not until this session's end
        r.watch()
        # the last checkpoint before the final evaluations: a part lost during them (generator-0,
        # whose replacement the closed pool no longer starts) loses no step
        last_checkpoint = r.checkpoint()
        if r.stopped_when:
            summary["stopped_when"] = r.stopped_when
        if STOP.is_set():  # stopped from outside: keep what was learned, skip the long final evaluation
            summary["stopped_at_step"] = r.step
        else:
            summary["after"] = {k: eval_summary(v) for k, v in r.evaluate(wait=True).items()}
            if r.evals.average is not None:  # Kuhn poker's average policy (RUN_DIR/average_policy.json)
                avg = r.evals.average.average()
                summary["after"]["kuhn/average"] = {k: v for k, v in avg.items() if k != "policy"}
                if set(cfg.games) == {"kuhn"}:  # one network for it (fitting it would move other games)
                    net = r.distill_average(avg)
                    after = {k: eval_summary(v) for k, v in net["after"].items()}
                    summary["average"] = {"fit": net["fit"], "after": after}
                    summary["after"]["kuhn/average_net"] = after["kuhn/exploitability"]
            if r.league is not None and cfg.task.name:
                summary["after"].update(r.final_match())
                # its games are rated into the league: the final checkpoint (written before) has them too
                ray.get(r.league.save.remote(str(last_checkpoint)))
            if r.reward_model is not None:  # what the run's reward model learned, on held-out pairs
                summary["after"]["reward_model/held_out"] = {
                    "accuracy": r.reward_model["held_out_accuracy"],
                    "accuracy_before": r.reward_model["held_out_accuracy_before"],
                    "pairs": r.reward_model["held_out_pairs"],
                }
            if r.evals.monitor is not None:  # the reward-hacking monitor's figures over the run
                summary["after"][f"{cfg.task.name}/monitor"] = r.evals.monitor.summary()
            if (run_dir / AFTER_SFT).exists():  # the supervised stage's figure, kept across a resume
                summary["after_sft"] = json.loads((run_dir / AFTER_SFT).read_text())
                for field in ("accuracy", "score", "judge_agreement"):  # those it measured
                    gain_over(summary["after"], summary["after_sft"], field, "sft")
            if cfg.learner.ema_decay:  # what "after" and the best measured
                summary["policy"] = {"weights": "averaged", "ema_decay": cfg.learner.ema_decay}
            summary["acceptance"] = acceptance(summary["after"], cfg.acceptance)
            if r.best.weights is not None:  # the best checkpoint, evaluated afresh beside the last
                best = r.evaluate(wait=True, prefix="best", weights=r.best.weights)
                summary["best"] = {**r.best.info, "after": {k: eval_summary(v) for k, v in best.items()}}
                figures = best_acceptance(cfg.acceptance, summary["after"], summary["best"]["after"])
                if cfg.task.name:
                    # greedy answers to the same held-out problems repeat the figure the best was
                    # selected on: an optimistic figure, kept in summary["best"], not as acceptance
                    figures = {k: v for k, v in figures.items() if not k.startswith("best/")}
                    summary["best"]["selected_on"] = "the held-out evaluations (optimistic)"
                summary["acceptance"].update(figures)
        summary.update(
            steps=r.step,
            wall_s=r.wall(),
            games_per_eval=2 * cfg.eval.games,
            last_checkpoint=str(last_checkpoint),
            **r.books(),
        )
        if r.league is not None:
            summary["league"] = r.league_metrics()
        write_atomic(summary_path, json.dumps(summary, indent=2))
        return run_dir
    finally:  # each step whatever the one before raised (a full disk failing the metrics' flush)
        with contextlib.ExitStack() as teardown:  # last in, first run
            teardown.callback(out.close)  # the terminal back, so an error raised before reaches it
            if owns_ray:
                teardown.callback(end_local_ray, started, out)
            if r is not None:
                teardown.callback(r.close)


def end_local_ray(started: Descendants, out: Console) -> None:
    """Shut down the local Ray this run started, and end what it left behind."""
    left = started.close(ray.shutdown)  # e.g. an engine core orphaned by a SIGTERM to the group
    if left:
        out.print(f"ended {len(left)} processes the local Ray left behind")
    if started.removed_segments:  # e.g. a killed engine's message queues
        out.print(f"removed {len(started.removed_segments)} shared-memory segments left in /dev/shm")


def builder_metrics(buffer: dict, before: dict | None = None) -> dict:
    """A task run's groups (the buffer's builder counts; selfplay/builder.py): totals so
    far, and the share of samples accepted since `before` (the counts at the last log;
    None: since the start)."""
    if not buffer.get("groups"):
        return {}
    before = before or {}
    samples = buffer["samples"] - before.get("samples", 0)
    out = {f"task/{k}": buffer[k] for k in (*BUILDER_COUNTS, "filled_from_reserve", "reserve_dropped")}
    if samples:
        out["task/accepted_share"] = (buffer["accepted"] - before.get("accepted", 0)) / samples
    decided = buffer["pairs_rules_decided"] - before.get("pairs_rules_decided", 0)
    if decided:  # self-rewarding: the rule judge's view of the pairs trained on since the last log
        out["task/pairs_rules_agreement"] = (
            buffer["pairs_rules_agree"] - before.get("pairs_rules_agree", 0)
        ) / decided
    return out


def gain_over(after: dict, before: dict, field: str, name: str) -> None:
    """Add FIELD_gain_over_NAME to each evaluation of `after`: its `field` minus `before`'s
    (e.g. held-out accuracy after rejection sampling minus after the supervised stage),
    an acceptance figure like any other."""
    for key, result in after.items():
        if field in result and field in before.get(key, {}):
            result[f"{field}_gain_over_{name}"] = result[field] - before[key][field]


def labelled_set(cfg: RunConfig, model_path: str, run_id: str):
    """The supervised stage's rows: sft.examples problems of the task with their targets, and
    sft.judge_examples rows teaching the judge role (task.judge self)."""
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(model_path)

    def encode(text: str, special: bool) -> list[int]:
        return tokenizer(text, add_special_tokens=special).input_ids

    task = task_of(cfg.task)
    table = sft_examples(task, encode, tokenizer.eos_token_id, cfg.sft.examples, cfg.seed, run_id)
    if cfg.sft.judge_examples:  # task.judge self: the judge role is taught beside the task
        judge = judge_examples(task, encode, tokenizer.eos_token_id, cfg.sft.judge_examples, cfg.seed, run_id)
        table = pa.concat_tables([table, judge])
    return table


def resume_config(run_dir: Path, overrides: list[str]) -> RunConfig:
    return load_config(run_dir / "config.yaml", overrides)
