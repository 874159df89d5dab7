"""The distributed program of one run, built in one place (as oat's `get_program`): which
actors exist, under which names, with which resources, and which handles each is given.
The classes themselves carry no placement; `selfplay/loop.py` shows the algorithm they
split between them.

    buffer      <- verifier (accepted turns)      <- generators (finished games)
    learner     <- buffer (batches); -> generators (weights), -> league (snapshots)
    league      -> generators (opponents, matchmaking)
    controller  owns the generator pool: starts generators with `spawn_generator`"""

from __future__ import annotations

import time
from dataclasses import dataclass, field
from pathlib import Path

import ray
from ray.util.placement_group import placement_group, remove_placement_group
from ray.util.scheduling_strategies import PlacementGroupSchedulingStrategy

from actors.buffer import BufferActor
from actors.controller import ControllerActor
from actors.generator import GeneratorActor
from actors.league import STATE_FILE as LEAGUE_STATE
from actors.league import LeagueActor
from actors.verifier import VerifierActor
from selfplay import schema
from selfplay.builder import PAIR_ROWS, sft_problems
from selfplay.config import RunConfig
from selfplay.scaling import generator_bundles
from selfplay.tasks import TASKS, task_of

# The learner's classes (transformers, torch.distributed) are imported where the learner is
# built: the controller imports this module for `spawn_generator` alone.
RUN_ACTORS = ("controller", "learner", "verifier", "buffer", "league")  # plus generator-N


@dataclass
class Program:
    buffer: object
    verifier: object
    learner: object
    controller: object
    league: object | None = None
    learner_workers: list = field(default_factory=list)  # ranks 1.. of a learner group
    learner_group: object | None = None  # their placement group

    def actors(self) -> list:
        return [
            a
            for a in (
                self.controller,
                self.learner,
                *self.learner_workers,
                self.verifier,
                self.buffer,
                self.league,
            )
            if a is not None
        ]

    def discard(self) -> None:
        """Kill the actors, free the learner group's placement group, and wait until no live
        actor holds a run's name (in a process that stays connected to Ray, a notebook's or a
        test's, the actors of a failed start outlived it, and the next run waited for their
        names, then failed on them)."""
        for actor in self.actors():
            ray.kill(actor)
        if self.learner_group is not None:
            remove_placement_group(self.learner_group)
            self.learner_group = None
        wait_until_free(run_actor_names())


def build_program(
    cfg: RunConfig,
    run_id: str,
    model_path: str,
    resume_from: Path | None,
    seed_offset: int = 0,
    run_dir: Path | None = None,
) -> Program:
    """Create the run's actors (generators come from the controller's `scale`). A resumed
    run's buffer, learner and league load their state from `resume_from`; `seed_offset`
    makes a resumed run's generators draw new games; the league records its members'
    checkpoints relative to `run_dir`. A failure part-way (a checkpoint's buffer that does not
    load, a learner group's placement that times out) kills the actors made so far and frees
    their names before it is raised."""
    made = Program(None, None, None, None)  # what exists so far, discarded on a failure
    try:
        _build(cfg, run_id, model_path, resume_from, seed_offset, run_dir, made)
    except BaseException:
        made.discard()
        raise
    return made


def _build(cfg, run_id, model_path, resume_from, seed_offset, run_dir, made: Program) -> None:
    """build_program's making of the actors, each kept in `made` as soon as it exists."""
    from learner.actor import LearnerActor
    from learner.group import LearnerWorker

    resume = str(resume_from) if resume_from else None
    builder = cfg.builder if cfg.task.name else None
    chains = builder is not None and getattr(TASKS[cfg.task.name], "chain", False)  # refine
    pairs = builder is not None and (builder.rows in PAIR_ROWS or chains) and run_dir is not None
    buffer = BufferActor.options(name="buffer").remote(
        cfg.buffer,
        cfg.seed,
        run_id,
        builder,
        str(run_dir / "preferences") if pairs else None,  # the pairs, for any DPO trainer
        model_path,
        schema.CHAIN_METHOD if chains else None,
    )
    made.buffer = buffer
    if resume:
        ray.get(buffer.load.remote(resume))
    verifier = VerifierActor.options(
        name="verifier", num_cpus=cfg.verifier.num_cpus, resources=cfg.verifier.resources
    ).remote(
        model_path,
        buffer,
        run_id,
        cfg.task,
        resume,
        cfg.generator.max_response_tokens,
        cfg.generator.board_symmetries,
    )
    made.verifier = verifier
    lcfg = cfg.learner
    options = learner_options(cfg)
    workers, group, ranks = [], None, ()
    if lcfg.num_workers > 1:  # a learner group: rank 0 below, ranks 1.. as LearnerWorkers
        group, address = learner_group(cfg)
        made.learner_group = group

        def rank(r: int) -> dict:
            strategy = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=r)
            return {**options, "scheduling_strategy": strategy}

        def meet(r: int) -> dict:
            return {"address": address, "rank": r, "world": lcfg.num_workers}

        workers = [
            LearnerWorker.options(name=f"learner-{r}", **rank(r)).remote(
                lcfg, cfg.model, model_path, cfg.seed, cfg.generator.temperature, meet(r), resume
            )
            for r in range(1, lcfg.num_workers)
        ]
        made.learner_workers = workers
        options, ranks = rank(0), (meet(0), workers)
    learner = LearnerActor.options(name="learner", **options).remote(
        lcfg, cfg.model, model_path, cfg.seed, buffer, run_id, resume, cfg.generator.temperature, *ranks
    )
    made.learner = learner
    league = None
    if cfg.league.enabled:
        league_state = resume if resume and (resume_from / LEAGUE_STATE).exists() else None
        league = LeagueActor.options(name="league").remote(
            cfg.league, cfg.seed, run_id, cfg.model.dtype, league_state, str(run_dir) if run_dir else None
        )
        made.league = league
    made.controller = ControllerActor.options(name="controller").remote(
        cfg, run_id, model_path, learner, verifier, buffer, league, seed_offset
    )


def learner_options(cfg: RunConfig) -> dict:
    """The learner's Ray resources: its CPUs, GPUs and custom resources."""
    lcfg = cfg.learner
    return {"num_cpus": lcfg.num_cpus, "num_gpus": lcfg.num_gpus, "resources": lcfg.resources}


def learner_task(cfg: RunConfig, fn):
    """`fn` as a Ray task where the learner would run."""
    return ray.remote(fn).options(**learner_options(cfg))


def learner_peak(cfg: RunConfig) -> float:
    """learner.peak_tflops auto: the learner device's dense matmul rate in TFLOP/s
    (learner/peak.py, cached per machine), measured where the learner would run before any
    of the run's actors start, so nothing of the run competes for its cores. A CPU learner
    on a one-node Ray that is this machine's reads this machine's cache here when it holds
    the figure (no task: ~2.5 s of a run's start, a process importing torch)."""
    from ray.util.client import ray as ray_client

    from learner.peak import cached_cpu_peak, measure_for

    alive = [n["NodeID"] for n in ray.nodes() if n["Alive"]]
    # a Ray client's runtime context is the cluster's, not this machine's
    if not ray_client.is_connected() and alive == [ray.get_runtime_context().get_node_id()]:
        cached = cached_cpu_peak(cfg.learner)
        if cached is not None:
            return cached
    return ray.get(learner_task(cfg, measure_for).remote(cfg.learner))


def learner_group(cfg: RunConfig, timeout_s: float = 300) -> tuple[object, str]:
    """The learner group's placement group (one bundle per rank: STRICT_PACK with GPUs, so
    NCCL stays within a node; else PACK) once placed, and the address its ranks meet at
    (a free port on rank 0's node)."""
    from learner.group import group_address

    lcfg = cfg.learner
    bundle = {"CPU": lcfg.num_cpus, **({"GPU": lcfg.num_gpus} if lcfg.num_gpus else {}), **lcfg.resources}
    group = placement_group([bundle] * lcfg.num_workers, strategy="STRICT_PACK" if lcfg.num_gpus else "PACK")
    ready, _ = ray.wait([group.ready()], timeout=timeout_s)
    if not ready:
        remove_placement_group(group)
        raise RuntimeError(
            f"learner.num_workers: no room for {lcfg.num_workers} learner ranks of {bundle} "
            f"within {timeout_s:g} s (Ray has {ray.available_resources()})"
        )
    at = PlacementGroupSchedulingStrategy(group, placement_group_bundle_index=0)
    try:
        return group, ray.get(group_address.options(scheduling_strategy=at).remote(lcfg.sync_host))
    except BaseException:
        remove_placement_group(group)  # the caller never gets it to free
        raise


def spawn_generator(cfg: RunConfig, run_id: str, model_path: str, name: str, seed_extra: int):
    """Start generator `name` (generator-N); returns (handle, placement group or None).
    With tensor_parallel_size > 1 its engine's workers take the GPUs of a STRICT_PACK
    placement group, one bundle per worker."""
    g = cfg.generator
    index = int(name.rsplit("-", 1)[1])
    options = {"name": name, "num_cpus": g.num_cpus, "num_gpus": g.num_gpus, "resources": g.resources}
    group = None
    if g.tensor_parallel_size > 1:
        group = placement_group(generator_bundles(g), strategy="STRICT_PACK")
        options.update(
            num_cpus=g.num_cpus / g.tensor_parallel_size,
            num_gpus=0,
            scheduling_strategy=PlacementGroupSchedulingStrategy(
                group, placement_group_bundle_index=0, placement_group_capture_child_tasks=True
            ),
        )
    seed = cfg.seed + 1000 * (index + 1) + seed_extra
    try:
        handle = GeneratorActor.options(**options).remote(
            name,
            run_id,
            cfg.games,
            model_path,
            cfg.model,
            g,
            seed,
            0,
            cfg.league.max_live_opponents,
            cfg.task,
            prompt_seeds(cfg),
        )
    except BaseException:  # e.g. the name still held by a failed generator being discarded
        if group is not None:  # nothing else holds it: its GPUs would stay taken for the run
            remove_placement_group(group)
        raise
    return handle, group


def prompt_seeds(cfg: RunConfig) -> list[int] | None:
    """The problem seeds a task run's waves draw from: the supervised stage's with
    task.prompts sft, else None (any train problem)."""
    if not cfg.task.name or cfg.task.prompts != "sft":
        return None
    task = task_of(cfg.task)
    return [seed for seed, _ in sft_problems(task, cfg.sft.examples, cfg.seed)]


def discard_generator(name: str, handle, group) -> None:
    """Kill generator `name` and free its placement group; returns once the name is free
    (a replacement may take it)."""
    ray.kill(handle)
    if group is not None:
        remove_placement_group(group)
    wait_until_free([name])


def run_actor_names() -> list[str]:
    """Live actors of a run in this namespace, e.g. those of a job that was just stopped
    (Ray removes them asynchronously once its driver has gone)."""
    return [
        n for n in ray.util.list_named_actors() if n in RUN_ACTORS or n.startswith(("generator-", "learner-"))
    ]


def wait_until_free(names: list[str], timeout_s: float = 60) -> None:
    """Until no live actor holds any of `names` in this namespace."""
    deadline = time.time() + timeout_s
    while names and time.time() < deadline:
        try:
            ray.get_actor(names[0])
            time.sleep(0.1)
        except ValueError:
            names.pop(0)
